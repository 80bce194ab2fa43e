"""Everything about a collection that is known before any agent runs, checked at once.

    collection, plan = check_collection(text, "tensoraios.md", strict=True, parse=parse_formula)

``l9 extract`` runs this before it publishes anything, so a collection the pipeline
would refuse or fail on is refused here with every reason, each at its file and line:

1. the loader: YAML, the fields of every agent, names, dependencies, rootpaths
   (:mod:`.loader`);
2. what the generator could not write: an expression named like a Python keyword,
   a builtin or a name the kernels module uses (:data:`RESERVED_KERNEL_NAMES`), a
   memory setting named ``storage``, a typed message's field named like a keyword,
   ``hops`` or a pydantic model attribute, two agents declaring different fields for
   one type (:func:`generation_errors`, :func:`message_errors`; the planner rejects
   these too);
3. each expression through the safe parser the SymPy worker uses (``parse``, given
   by the caller: an extraction agent does not import the SymPy agent), so a typo
   such as ``max()`` is named here instead of being refused in phase 2;
4. when the loader found nothing wrong: the whole plan (cycles; every unresolvable
   entry: errors in strict mode, otherwise left out of the plan, which lists them
   under ``unresolved``) and whether any test is planned (validation runs the
   generated tests and fails a run that has none).

Checks 2 and 3 run on every agent the loader accepted, even when others have errors.
"""

from __future__ import annotations

import builtins
import keyword
from collections.abc import Callable

from pydantic import BaseModel

from agents.contracts.extraction.collection import Collection, SchemaError, SchemaErrors
from agents.contracts.extraction.plan import LockedPlan

from .loader import read_collection
from .planner import build_plan, cycle_errors, research

#: Names a kernel may not take: the kernels module defines, imports or calls them.
RESERVED_KERNEL_NAMES = frozenset({"numpy", "npt", "math", "functools", "evaluate_all", "annotations"})
#: Field names a typed message may not declare: every generated stream payload has them.
RESERVED_FIELD_NAMES = frozenset({"hops"})
_MODEL_ATTRIBUTES = frozenset(name for name in dir(BaseModel) if not name.startswith("_"))
_BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))
#: The kinds of the generated tests (``docs/SCHEMA.md``).
TEST_KINDS = frozenset({"agent_tests", "kernel_tests"})
#: Reads one formula as the SymPy worker would: None when it parses, else why not
#: (``forbidden_name at 1:1: max is not allowed``).
FormulaCheck = Callable[[str], str | None]


def kernel_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a generated kernel function, or None."""
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "is a Python keyword"
    if name in _BUILTINS:
        return "is a Python builtin"
    if name in RESERVED_KERNEL_NAMES:
        return f"is one of the kernels module's own names ({', '.join(sorted(RESERVED_KERNEL_NAMES))})"
    return None


def generation_errors(collection: Collection) -> list[SchemaError]:
    """What the generator would refuse to write, at the line of the field that asks for it."""
    errors = []
    for agent in collection:
        for name in sorted(agent.expressions):
            problem = kernel_name_problem(name)
            if problem is not None:
                message = f"cannot name a kernel: '{name}' {problem}"
                errors.append(collection.error(agent.name, ("expressions", name), "invalid", message))
        for layer, spec in agent.memorytopology.layers():
            if "storage" in spec.settings:
                message = (
                    f"would be the setting {layer}_storage, which holds the layer's storagetype: rename it"
                )
                loc = ("memorytopology", layer, "settings", "storage")
                errors.append(collection.error(agent.name, loc, "invalid", message))
    return [*errors, *message_errors(collection)]


def field_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a field of a generated payload model, or None."""
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "is a Python keyword"
    if name in RESERVED_FIELD_NAMES:
        return "is the relay counter every stream payload carries"
    if name.startswith("model_") or name in _MODEL_ATTRIBUTES:
        return "is a name pydantic models use (model_*, json, copy, ...)"
    return None


def message_errors(collection: Collection) -> list[SchemaError]:
    """Typed messages the generator could not write: a reserved field name, two agents disagreeing."""
    errors = []
    first: dict[str, tuple[str, dict[str, str]]] = {}
    for agent in collection:
        for type_, fields in agent.streams.fields.items():
            for name in fields:
                problem = field_name_problem(name)
                if problem is not None:
                    message = f"cannot name a field: '{name}' {problem}"
                    errors.append(
                        collection.error(agent.name, ("streams", "fields", type_, name), "invalid", message)
                    )
            owner, known = first.setdefault(type_, (agent.name, fields))
            if known != fields:
                line = collection.line_of(owner, ("streams", "fields", type_))
                message = (
                    f"differs from the fields agent '{owner}' declares for it at line {line}"
                    f" ({_fields_text(known)}; here {_fields_text(fields)}): two agents must agree on a type"
                )
                errors.append(collection.error(agent.name, ("streams", "fields", type_), "invalid", message))
    return errors


def _fields_text(fields: dict[str, str]) -> str:
    return ", ".join(f"{name}: {fields[name]}" for name in sorted(fields))


def formula_errors(collection: Collection, check: FormulaCheck) -> list[SchemaError]:
    """Every expression the safe parser refuses, at its line."""
    errors = []
    for agent in collection:
        for name, formula in sorted(agent.expressions.items()):
            problem = check(formula)
            if problem is not None:
                message = f"is refused by the safe parser: {problem}"
                errors.append(collection.error(agent.name, ("expressions", name), "invalid", message))
    return errors


def plan_errors(collection: Collection, *, strict: bool) -> tuple[LockedPlan | None, list[SchemaError]]:
    """The plan (None when the dependencies form a cycle) and what is wrong with it."""
    found = research(collection)
    if not found.acyclic:
        return None, cycle_errors(collection, found)
    plan, unresolved = build_plan(collection, found)
    errors = list(unresolved) if strict else []
    if not any(item.kind in TEST_KINDS for item in plan.items):
        errors.append(
            SchemaError(
                collection.file,
                1,
                "empty",
                "the collection plans no test file (test_*.py): validation runs the generated tests and"
                " fails a run that has none (see docs/SCHEMA.md)",
            )
        )
    return plan, errors


def check_collection(
    text: str, origin: str, *, strict: bool = True, parse: FormulaCheck | None = None
) -> tuple[Collection, LockedPlan | None]:
    """The collection and its plan; SchemaErrors with everything wrong (module docstring)."""
    collection, loaded = read_collection(text, origin)
    errors = [*loaded, *generation_errors(collection)]
    if parse is not None:
        errors += formula_errors(collection, parse)
    plan = None
    if not loaded:
        plan, found = plan_errors(collection, strict=strict)
        errors += found
    if errors:
        raise SchemaErrors(errors)
    return collection, plan


__all__ = [
    "RESERVED_FIELD_NAMES",
    "RESERVED_KERNEL_NAMES",
    "TEST_KINDS",
    "FormulaCheck",
    "check_collection",
    "field_name_problem",
    "formula_errors",
    "generation_errors",
    "kernel_name_problem",
    "message_errors",
    "plan_errors",
]

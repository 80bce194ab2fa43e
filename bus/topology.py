"""Which stream an envelope type travels on.

The default is one stream per area: ``l9.<area>.<name>.v<n>`` goes to stream
``<area>``. Routes (glob pattern -> stream) override it; the first match wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from functools import lru_cache

from envelope import split_type

from .keys import check_stream_name

# The streams the agents read and write, named in this one place.
#: Extraction requests (``l9.extract.*``), read by the planner.
EXTRACT_STREAM = "extract"
#: Locked plans (``l9.plan.*``), read by the generator.
PLAN_STREAM = "plan"
#: Generated code (``l9.generate.*``), read by the enforcer.
GENERATE_STREAM = "generate"
#: Enforced code (``l9.enforce.*``), read by the validator.
ENFORCE_STREAM = "enforce"
#: Run phases (``l9.run.*``), read by the reporter.
RUN_STREAM = "run"
#: Committed trail records (``l9.audit.*``), written by the auditor.
AUDIT_STREAM = "audit"
#: Requests to the SymPy worker (``l9.sympy.*``).
SYMPY_STREAM = "sympy"
#: The SymPy worker's per-operation telemetry.
SYMPY_EVENTS_STREAM = "sympy.events"
#: The SymPy worker's results, for the audit trail.
SYMPY_RESULTS_STREAM = "sympy.results"


class Topology:
    def __init__(self, routes: Mapping[str, str] | None = None) -> None:
        self.routes = {pattern: check_stream_name(s) for pattern, s in (routes or {}).items()}
        self.stream_for = lru_cache(maxsize=4096)(self._stream_for)

    def _stream_for(self, type_: str) -> str:
        for pattern, stream in self.routes.items():
            if fnmatchcase(type_, pattern):
                return stream
        name, _ = split_type(type_)
        return check_stream_name(name.split(".")[1])


#: The streams of L9 that do not follow the one-stream-per-area default.
DEFAULT_TOPOLOGY = Topology(
    {
        "l9.demo.task.*": "demo.tasks",
        "l9.demo.result.*": "demo.results",
    }
)

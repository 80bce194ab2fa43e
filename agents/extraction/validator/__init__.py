"""The validator (phases 4 and 5 of an extraction run): compile, test, cover, verify.

    run = await phase4(folder, timeout_s=300)          # TestRun: compile errors, counts, coverage
    verified = verify(folder, collection="demo")       # l9.validation.verify.v1 payload
    tests, verified, ended = await validate(enforced, timeout_s=300)

``l9 agent run validator`` runs :class:`ValidatorAgent` on the ``enforce`` stream.
"""

from .agent import ENFORCE_STREAM, ValidatorAgent, phase4_reasons, phase5_reasons, validate, verdict
from .folder import ExtractionManifest, ManifestError, folder_files, load_manifest, sha256_of
from .imports import import_cycles, import_graph, module_of
from .tests_run import (
    MIN_COVERAGE,
    MIN_PASS_RATE,
    TestRun,
    compile_all,
    parse_coverage,
    parse_junit,
    phase4,
    run_tests,
)
from .verify import findable, verify

__all__ = [
    "ENFORCE_STREAM",
    "MIN_COVERAGE",
    "MIN_PASS_RATE",
    "ExtractionManifest",
    "ManifestError",
    "TestRun",
    "ValidatorAgent",
    "compile_all",
    "findable",
    "folder_files",
    "import_cycles",
    "import_graph",
    "load_manifest",
    "module_of",
    "parse_coverage",
    "parse_junit",
    "phase4",
    "phase4_reasons",
    "phase5_reasons",
    "run_tests",
    "sha256_of",
    "validate",
    "verdict",
    "verify",
]

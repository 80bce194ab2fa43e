"""The enforcer (phase 3): governance policies on a generated extraction folder.

* :mod:`.folder` reads the folder and checks it against the generator's envelope;
* :mod:`.judge` takes the decisions (plan, artifacts, set) with one policy engine;
* :mod:`.ledger` makes a redelivered envelope repeat nothing;
* :mod:`.agent` is ``l9 agent run enforcer``: decisions, escalations, the outcome.
"""

from .agent import GENERATE_STREAM, EnforcerAgent, outcome_payloads, run_failed, verdict_of
from .folder import INTEGRITY_POLICY, MANIFEST_FORMAT, Folder, read_folder
from .judge import PLAN_PATH, SET_PATH, Judged, Verdict, judge, plan_artifact
from .ledger import Ledger, ledger_key

__all__ = [
    "GENERATE_STREAM",
    "INTEGRITY_POLICY",
    "MANIFEST_FORMAT",
    "PLAN_PATH",
    "SET_PATH",
    "EnforcerAgent",
    "Folder",
    "Judged",
    "Ledger",
    "Verdict",
    "judge",
    "ledger_key",
    "outcome_payloads",
    "plan_artifact",
    "read_folder",
    "run_failed",
    "verdict_of",
]

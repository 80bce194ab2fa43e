"""The rules runtime: what a generated agent (or any agent) calls to do what its schema's
rules state with an input.

* :mod:`.conditions` - ``compile_condition`` / ``compile_value``: relational and numeric
  expressions read by the SymPy worker's safe parser, checked against the value names, printed
  as Python code (``source``) and compiled to a callable. It imports SymPy, so it is not
  imported here: a generated agent pastes the printed code and needs no SymPy at run time.
* :class:`Window` - count / sum / mean / min / max of the values of the last N seconds or N
  entries per key, in Redis (idempotent per envelope id, trimmed on add, with TTLs).
* :class:`Join` - one input of each of several types with the same key within a window, then
  fused; windows that close incomplete claimed once each.
* :class:`Episodic` - records appended to the agent's PostgreSQL table, the latest by key.
* :func:`link` / :func:`neighbours` - entities linked in the graph store (semantic memory).

Errors: :class:`RuleError` (a rule or an input that cannot work: ``where`` and a one-line
message) and :class:`StoreUnavailable` (PostgreSQL away: retry). docs/ARCHITECTURE.md,
"Rules runtime", says what each piece stores where.
"""

from .episodic import Episode, Episodic
from .errors import RuleError, StoreUnavailable
from .joins import Incomplete, Join, Joined, Part
from .semantic import check_link, link, neighbours
from .windows import AGGREGATES, Aggregate, Window

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "Episode",
    "Episodic",
    "Incomplete",
    "Join",
    "Joined",
    "Part",
    "RuleError",
    "StoreUnavailable",
    "Window",
    "check_link",
    "link",
    "neighbours",
]

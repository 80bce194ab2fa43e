"""The rules runtime's small exception vocabulary.

* :class:`RuleError` - a rule that cannot work (a condition naming an unknown value, a bad
  window size, a label Cypher cannot take) or an input it cannot use (a missing value, a key
  that is not text): ``where`` says which rule or field, ``message`` what is wrong, one line.
  A handler meeting one on an input should dead-letter that input (``bus.DeadLetter``):
  retrying cannot make it right.
* :class:`StoreUnavailable` - PostgreSQL did not answer (episodic memory): retry later.
  Redis and the graph store raise their own (``bus.TRANSIENT``, ``memory.graph.GraphUnavailable``).
"""

from __future__ import annotations


class RuleError(ValueError):
    """``<where>: <message>``, on one line."""

    def __init__(self, where: str, message: str) -> None:
        self.where = " ".join(where.split())
        self.message = " ".join(message.split())
        super().__init__(f"{self.where}: {self.message}")


class StoreUnavailable(Exception):
    """A store the rules runtime writes to is away: the same call may succeed later."""

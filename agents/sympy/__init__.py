"""The SymPy worker: safe parsing, isolated symbolic/numeric operations, and its client.

Importing this package does not import SymPy; the parser and the operations
(``agents.sympy.parser``, ...) do, and only the worker's subprocesses use them.
"""

from .errors import ParseRejected, Position, ToolError, ToolTimeout

__all__ = ["ParseRejected", "Position", "ToolError", "ToolTimeout"]

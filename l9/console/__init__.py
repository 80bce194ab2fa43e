"""``l9 console``: the web console of a deployment (a small starlette app, live over
server-sent events, htmx vendored under ``static/``).

Pages (``pages/``): streams, groups and consumers; dead letters with replay; the audit trail
live with an entry's lineage; extraction runs with their phases, folder and evidence report;
governance escalations with approve and deny; the SymPy worker's last 60 seconds. Reads reuse
the functions the commands use (``l9.status``, ``l9.dead``, ``l9 tail``'s loop, the report
engine, ``governance``); writes do what ``l9 dead replay`` and ``l9 governance approve|deny``
do, for an operator signed in with the console token (``auth``). See docs/CONSOLE.md.
"""

from .app import create_app
from .backend import Backend, Unavailable
from .config import ConsoleConfig, ConsoleConfigError
from .server import ConsolePortError, ConsoleServer, listen, serve

__all__ = [
    "Backend",
    "ConsoleConfig",
    "ConsoleConfigError",
    "ConsolePortError",
    "ConsoleServer",
    "Unavailable",
    "create_app",
    "listen",
    "serve",
]

"""The ``l9`` console script: ``l9 health`` is answered before the CLI loads.

Compose runs ``l9 health AGENT`` every few seconds in every agent's container. The full
CLI (:mod:`l9.cli`: typer, rich, every subcommand module and through them the agents and
the bus) takes seconds to import on a small machine; :func:`l9.health.main` needs the
standard library and redis-py only. Everything else, and a ``health`` the light path
leaves to the CLI (``--help``, a usage error, a setting it refuses), goes to :func:`l9.cli.main`.
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["health"]:
        from l9.health import main as health

        code = health(args[1:])
        if code is not None:
            sys.exit(code)
    from l9.cli import main as cli

    cli()

"""The ``l9`` command: the typer app, built here from the subcommand modules of this package.

Each module (``agent``, ``audit``, ``console``, ``demo``, ``dev``, ``extract``,
``governance``, ``graph``, ``ops``, ``report``, ``sympy``, ``up``) defines typer apps and
never imports this one: a named app (``typer.Typer(name="audit")``) is a group, ``l9 audit
...``; an unnamed one (``commands``) holds top-level commands (``l9 tail``). What they share is
:mod:`l9.cli.common`. The console script (and ``python -m l9``) is ``l9.entry:main``: it
answers ``l9 health`` itself and hands everything else to :func:`main`.
"""

from __future__ import annotations

import typer

from l9.cli import agent, audit, demo, dev, extract, governance, graph, ops, report, sympy, up
from l9.cli import console as web_console

app = typer.Typer(no_args_is_help=True, help="L9: an event-driven multi-agent bus.")

#: Every subcommand's app, in the order ``l9 --help`` lists them.
SUBCOMMANDS: tuple[typer.Typer, ...] = (
    ops.commands,  # status, health, trim, asyncapi
    up.commands,  # up, publish
    audit.commands,  # tail
    extract.commands,  # extract
    dev.dev_app,
    agent.agent_app,
    audit.audit_app,
    report.report_app,
    governance.acl_app,
    governance.governance_app,
    graph.graph_app,
    ops.dead_app,
    ops.deploy_app,
    sympy.sympy_app,
    demo.demo_app,
    web_console.commands,  # console
)
for sub in SUBCOMMANDS:
    app.add_typer(sub)


def main() -> None:
    app()

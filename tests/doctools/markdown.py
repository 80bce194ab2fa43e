"""The commands of docs/*.md, and how a test runs them (the conventions of the docs).

* A fenced ``sh`` block holds commands a reader types. The blocks of one
  document run top to bottom in one ``bash`` session (``set -euo pipefail``),
  so ``cd`` and variables carry over, exactly as in the reader's terminal.
* A command ending in `` &`` runs in the background, as in any shell; the test
  stops it (SIGTERM) when the document ends.
* A command ending in ``# until Ctrl-C`` runs until the reader stops it: the test
  runs it in the background and sends it SIGINT when the document ends.
* A fenced ``python file=NAME`` block is a file the reader saves as ``NAME``
  (in the current folder) at that point.
* A fenced ``text`` block right after an ``sh`` block is output: each of its
  non-empty lines must appear, in order, in what that block printed (``...``
  inside a line matches anything).
* Other shell fences (``bash``, ``console``, ``shell``) are refused: nothing a
  reader might type escapes the tests. Every command's program must have a
  runner (:data:`RUNNERS`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

DOCS = Path(__file__).resolve().parents[2] / "docs"
SHELL_FENCES = {"bash", "console", "shell", "zsh", "shell-session"}
BACKGROUND = " &"
UNTIL_CTRL_C = "# until Ctrl-C"
#: Programs the doc tests can run, and how: a real program on the test's stack, except
#: ``docker``, which tests/doctools/compose_shim.py stands in for (no Docker engine here).
RUNNERS = {
    "l9": "the l9 command of the checkout's virtualenv, on the document's stack",
    "python": "the checkout's virtualenv",
    "docker": "tests/doctools/compose_shim.py: compose commands checked against docker-compose 1.29",
    "cd": "bash",
    "mkdir": "coreutils",
    "cat": "coreutils",
    "cp": "coreutils",
    "echo": "bash",
    "export": "bash",
    "test": "bash",
    ".": "bash",
    "grep": "grep",
    "kill": "bash",
    "jobs": "bash",
    "sleep": "coreutils",
    "wait": "bash",
}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    kind: str  # "sh", "file", "output"
    text: str
    file: str | None = None

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line}"


@dataclass(frozen=True)
class Command:
    block: Block
    text: str

    @property
    def background(self) -> bool:
        return self.text.endswith(BACKGROUND)

    @property
    def until_ctrl_c(self) -> bool:
        return self.text.endswith(UNTIL_CTRL_C)

    @property
    def programs(self) -> list[str]:
        """Every program the command runs: the first word of each pipeline part and ``$(...)``."""
        lexer = shlex.shlex(self.text.removesuffix(UNTIL_CTRL_C), posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        found, expect = [], True
        for token in lexer:
            if token and set(token) <= set("();|&"):
                expect = True
            elif expect and not ASSIGNMENT.match(token):
                found.append(token)
                expect = False
        return found


class DocError(ValueError):
    """A document breaks the conventions above."""


def blocks(doc: Path) -> list[Block]:
    """The runnable blocks of a document, in order; refuses shell fences other than ``sh``."""
    found: list[Block] = []
    for token in MarkdownIt().parse(doc.read_text()):
        if token.type != "fence" or token.map is None:
            continue
        info, line = token.info.split(), token.map[0] + 1
        lang = info[0] if info else ""
        where = f"docs/{doc.name}:{line}"
        if lang in SHELL_FENCES:
            raise DocError(f"{where}: a ```{lang} block: write commands in ```sh blocks (they are tested)")
        if lang == "sh":
            found.append(Block(doc.name, line, "sh", token.content))
        elif lang == "python" and len(info) > 1 and info[1].startswith("file="):
            found.append(Block(doc.name, line, "file", token.content, info[1].removeprefix("file=")))
        elif lang == "text" and found and found[-1].kind == "sh" and _adjacent(doc, found[-1], token.map[0]):
            found.append(Block(doc.name, line, "output", token.content))
    return found


def _adjacent(doc: Path, previous: Block, start: int) -> bool:
    """Whether only blank lines separate the two fences (then the second is the first's output)."""
    lines = doc.read_text().splitlines()
    between = lines[previous.line + previous.text.count("\n") + 1 : start]
    return all(not line.strip() for line in between)


def commands(block: Block) -> list[Command]:
    """The logical lines of an ``sh`` block (``\\`` continuations joined, comments dropped)."""
    out, pending = [], ""
    for raw in block.text.splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(Command(block, (pending + line).strip()))
        pending = ""
    if pending:
        raise DocError(f"{block.where}: the last command ends in a line continuation")
    return out


def all_commands(docs: Path = DOCS) -> list[Command]:
    return [
        c for doc in sorted(docs.glob("*.md")) for b in blocks(doc) if b.kind == "sh" for c in commands(b)
    ]


def shell_line(command: Command) -> str:
    """The line the test's bash runs for ``command``."""
    if command.until_ctrl_c:
        body = command.text.removesuffix(UNTIL_CTRL_C).rstrip()
        return f"{body} & L9_DOC_CTRL_C+=($!)"
    if command.background:
        return f"{command.text} L9_DOC_BACKGROUND+=($!)"
    return command.text

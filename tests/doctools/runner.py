"""Run a document's commands as its reader would: one bash session, block after block.

The script echoes a marker before each ``sh`` block, so the output of each block
is known and checked against the ``text`` block that follows it. Background
commands are stopped when the document ends (SIGTERM; SIGINT for ``# until
Ctrl-C`` ones), and waited for.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .markdown import Block, blocks, commands, shell_line

MARK = "@@l9-doc-block@@"
#: What the script prints on stderr when one of the document's commands fails (``set -e``).
FAILED = "@@l9-doc-failed@@"
PREAMBLE = f"""set -euo pipefail
set -m  # job control: background commands get SIGINT like a foreground one would (Ctrl-C)
L9_DOC_BACKGROUND=()
L9_DOC_CTRL_C=()
l9_doc_stop() {{
  local rc=$?
  for pid in "${{L9_DOC_CTRL_C[@]}}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${{L9_DOC_BACKGROUND[@]}}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${{L9_DOC_CTRL_C[@]}}" "${{L9_DOC_BACKGROUND[@]}}"; do
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  echo "{MARK} end rc=$rc"
}}
trap l9_doc_stop EXIT
trap 'echo "{FAILED} (exit $?): $BASH_COMMAND" >&2' ERR
"""


@dataclass
class DocRun:
    returncode: int
    stdout: str
    stderr: str
    #: What each ``sh`` block printed (stdout), by the block's line.
    outputs: dict[int, str]

    def output_of(self, block: Block) -> str:
        return self.outputs.get(block.line, "")

    @property
    def failed_command(self) -> str | None:
        """The document's command that failed and ended the run, with its exit status."""
        failures = [line for line in self.stderr.splitlines() if line.startswith(FAILED)]
        return failures[-1].removeprefix(FAILED).strip() if failures else None


def script(doc: Path) -> str:
    """The bash script of a document: its ``sh`` commands and its files, in order."""
    parts = [PREAMBLE]
    for block in blocks(doc):
        if block.kind == "sh":
            parts.append(f"echo {MARK} {block.line}")
            parts += [shell_line(c) for c in commands(block)]
        elif block.kind == "file":
            assert block.file is not None
            parts.append(f"cat > {shlex.quote(block.file)} <<'L9_DOC_FILE_END'\n{block.text}L9_DOC_FILE_END")
    return "\n".join(parts) + "\n"


def run_doc(doc: Path, *, cwd: Path, env: dict[str, str], timeout: float = 600) -> DocRun:
    """Run the document's script; past ``timeout`` its whole process group is killed and the
    failure shows the tail of what it printed."""
    with tempfile.TemporaryDirectory(prefix="l9-doc-") as folder:
        out_path, err_path = Path(folder) / "stdout", Path(folder) / "stderr"
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = subprocess.Popen(
                ["bash", "-c", script(doc)], cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True
            )
            try:
                returncode = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(
                    f"{doc.name}: still running after {timeout:g} s; it printed:\n"
                    f"{out_path.read_text()[-3000:]}\n--- stderr ---\n{err_path.read_text()[-3000:]}"
                ) from None
        done = DocRun(returncode, out_path.read_text(), err_path.read_text(), {})
    current: int | None = None
    for line in done.stdout.splitlines(keepends=True):
        if line.startswith(MARK):
            word = line.split()[1]
            current = int(word) if word.isdigit() else None
            continue
        if current is not None:
            done.outputs[current] = done.outputs.get(current, "") + line
    return done


def missing_output(expected: str, actual: str) -> list[str]:
    """The lines of ``expected`` not found, in order, in ``actual`` (``...`` matches anything)."""
    lines, missing, at = actual.splitlines(), [], 0
    for want in (w.strip() for w in expected.splitlines()):
        if not want:
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        for i in range(at, len(lines)):
            if pattern.search(lines[i]):
                at = i + 1
                break
        else:
            missing.append(want)
    return missing


def check_outputs(doc: Path, run: DocRun) -> list[str]:
    """Every ``text`` block's lines against its ``sh`` block's output: problems, located."""
    problems, previous = [], None
    for block in blocks(doc):
        if block.kind == "output" and previous is not None:
            printed = run.output_of(previous)
            for line in missing_output(block.text, printed):
                problems.append(
                    f"{block.where}: not printed by the block above: {line!r}; it printed:\n{printed}"
                )
        previous = block if block.kind == "sh" else None
    return problems


def base_env(home: Path, path: str) -> dict[str, str]:
    """A reader's environment: a fresh HOME, the checkout's virtualenv first on PATH, a terminal
    400 columns wide (rich wraps at COLUMNS when output is not a terminal), nothing else."""
    return {
        "HOME": str(home),
        "PATH": path + os.pathsep + "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "COLUMNS": "400",
    }

"""The commands of docs/*.md: found, each with a runner, each document run by a test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.doctools.markdown import DOCS, RUNNERS, Block, DocError, all_commands, blocks, commands, shell_line
from tests.doctools.runner import missing_output, script

#: The test that runs each document's commands.
DOC_TESTS = {
    "INTEGRATION.md": "test_integration_md_gives_a_working_agent",
    "OPERATIONS.md": "test_operations_md",
    "ARCHITECTURE.md": "test_architecture_md",
    "PERFORMANCE.md": "test_performance_md_commands_print_the_figures_it_cites",
    "TESTING.md": "test_testing_md_tests_the_area_agent",
}


def test_every_command_in_the_docs_has_a_runner() -> None:
    found = all_commands()
    assert len(found) >= 40, "the docs' commands are found"
    orphans = [f"{c.block.where}: {c.text}" for c in found if any(p not in RUNNERS for p in c.programs)]
    assert orphans == [], "commands no test can run:\n" + "\n".join(orphans)


def test_every_document_with_commands_is_run_by_a_test() -> None:
    source = (ROOT / "tests/integration/test_docs.py").read_text()
    defined = {
        n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    with_commands = {doc.name for doc in DOCS.glob("*.md") if any(b.kind == "sh" for b in blocks(doc))}
    assert with_commands <= set(DOC_TESTS), with_commands - set(DOC_TESTS)
    assert {DOC_TESTS[name] for name in with_commands} <= defined


def _doc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "DOC.md"
    path.write_text(text)
    return path


def test_other_shell_fences_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DocError, match=r"DOC.md:3: a ```bash block: write commands in ```sh blocks"):
        blocks(_doc(tmp_path, "# t\n\n```bash\nrm -rf /\n```\n"))


def test_blocks_commands_and_their_conventions(tmp_path: Path) -> None:
    doc = _doc(
        tmp_path,
        "```sh\n# a comment\nl9 agent run sympy &\nFOO=1 l9 tail \\\n  --follow  # until Ctrl-C\n"
        "id=$(l9 x | python -c 'print(1)')\n```\n\n```text\nhello\n```\n\n"
        "```python file=a.py\nprint('a')\n```\n\nProse.\n\n```text\nnot output\n```\n",
    )
    found = blocks(doc)
    assert [(b.kind, b.line) for b in found] == [("sh", 1), ("output", 9), ("file", 13)]
    cmds = commands(found[0])
    assert [c.text for c in cmds] == [
        "l9 agent run sympy &",
        "FOO=1 l9 tail    --follow  # until Ctrl-C",
        "id=$(l9 x | python -c 'print(1)')",
    ]
    assert [c.programs for c in cmds] == [["l9"], ["l9"], ["l9", "python"]]
    assert shell_line(cmds[0]) == "l9 agent run sympy & L9_DOC_BACKGROUND+=($!)"
    assert shell_line(cmds[1]) == "FOO=1 l9 tail    --follow & L9_DOC_CTRL_C+=($!)"
    text = script(doc)
    assert "cat > a.py <<'L9_DOC_FILE_END'\nprint('a')\nL9_DOC_FILE_END" in text
    assert text.index("L9_DOC_BACKGROUND+=") < text.index("cat > a.py")


def test_a_dangling_continuation_is_an_error(tmp_path: Path) -> None:
    (block,) = blocks(_doc(tmp_path, "```sh\nl9 status \\\n```\n"))
    with pytest.raises(DocError, match="line continuation"):
        commands(block)


def test_expected_output_lines_in_order_with_wildcards() -> None:
    printed = "REDIS_URL=redis://127.0.0.1:4242/0\nnoise\narea: 1 live consumer(s): area-0\n"
    assert missing_output("REDIS_URL=redis://...\n\narea: 1 live ...", printed) == []
    assert missing_output("area: 1 live\nREDIS_URL=", printed) == ["REDIS_URL="], "order matters"
    assert missing_output("sympy: 2 live", printed) == ["sympy: 2 live"]


def test_the_block_type_is_exported() -> None:
    assert Block.__name__ == "Block"


def test_the_readme_starts_production_exactly_as_operations_md_does() -> None:
    readme = (ROOT / "README.md").read_text().split("## Production (docker compose)", 1)[1]
    readme_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    starting = (DOCS / "OPERATIONS.md").read_text().split("## Starting", 1)[1]
    assert readme_block == starting.split("```sh\n", 1)[1].split("```", 1)[0]

"""Rule ``forbidden_calls``: dangerous calls found on the syntax tree, evasions included."""

from __future__ import annotations

import itertools
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance import Artifact, Finding
from governance._rules import build_rule

RULE = build_rule("forbidden_calls", {})


def scan(source: str, path: str = "gen/mod.py") -> list[Finding]:
    return RULE.artifact(Artifact(path, textwrap.dedent(source)))


def whats(source: str) -> str:
    return "\n".join(f.what for f in scan(source))


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("eval('1+1')", "builtins.eval"),
        ("exec(code)", "builtins.exec"),
        ("compile(src, 'f', 'exec')", "builtins.compile"),
        ("__import__('os')", "builtins.__import__"),
        ("import os\nos.system('ls')", "os.system"),
        ("import os\nos.popen('ls')", "os.popen"),
        ("import os\nos.execvp('sh', ['sh'])", "os.execvp"),
        ("import pickle\npickle.loads(blob)", "pickle.loads"),
        ("import marshal\nmarshal.loads(blob)", "marshal.loads"),
        ("import importlib\nimportlib.import_module(name)", "importlib.import_module"),
        ("import subprocess\nsubprocess.getoutput('ls')", "subprocess.getoutput"),
    ],
)
def test_direct_forbidden_calls_are_found_with_their_line(source: str, target: str) -> None:
    found = scan(source)
    assert [f.what.split(":")[0].split(" (")[0] for f in found] == [f"forbidden {target}"]
    assert found[0].line == source.count("\n") + 1
    assert found[0].file == "gen/mod.py"


@pytest.mark.parametrize(
    ("source", "target"),
    [
        # the examples
        ("getattr(__builtins__, 'ev'+'al')('1')", "builtins.eval"),
        ("from os import system as s\ns('ls')", "os.system"),
        # string building the attribute name
        ("getattr(__builtins__, 'e' 'val')(x)", "builtins.eval"),
        ("getattr(__builtins__, ''.join(['e', 'v', 'a', 'l']))(x)", "builtins.eval"),
        ("getattr(__builtins__, 'lave'[::-1])(x)", "builtins.eval"),
        ("getattr(__builtins__, f\"{'ex'}ec\")(x)", "builtins.exec"),
        ("getattr(__builtins__, chr(101) + 'val')(x)", "builtins.eval"),
        ("getattr(__builtins__, 'EVAL'.lower())(x)", "builtins.eval"),
        ("getattr(__builtins__, '{}{}'.format('ev', 'al'))(x)", "builtins.eval"),
        ("getattr(__builtins__, '%sal' % 'ev')(x)", "builtins.eval"),
        ("name = 'ev' + 'al'\ngetattr(__builtins__, name)(x)", "builtins.eval"),
        # module namespaces
        ("import builtins\nbuiltins.eval(x)", "builtins.eval"),
        ("import builtins as b\nb.exec(x)", "builtins.exec"),
        ("__builtins__['eval'](x)", "builtins.eval"),
        ("__builtins__.__dict__['exec'](x)", "builtins.exec"),
        ("globals()['__builtins__'].eval(x)", "builtins.eval"),
        ("import sys\nsys.modules['os'].system('ls')", "os.system"),
        ("import sys\nsys.modules.get('os').system('ls')", "os.system"),
        ("import os\nvars(os)['system']('ls')", "os.system"),
        ("import os\ngetattr(os, 'sys' + 'tem')('ls')", "os.system"),
        ("__import__('os').system('ls')", "os.system"),
        ("import posix\nposix.system('ls')", "os.system"),
        ("import _pickle\n_pickle.loads(b)", "pickle.loads"),
        # aliases through assignment
        ("import os\nrun = os.system\nrun('ls')", "os.system"),
        ("f = eval\nf(x)", "builtins.eval"),
        ("a, b = len, exec\nb(x)", "builtins.exec"),
        ("import os\no = len\no = os\no.system('ls')", "os.system"),
        ("from pickle import loads as l\nl(blob)", "pickle.loads"),
        ("import functools\nfunctools.partial(eval)(x)", "builtins.eval"),
        # passed, not called
        ("list(map(eval, lines))", "builtins.eval"),
        ("if False:\n    eval = len\neval(x)", "builtins.eval"),
    ],
)
def test_evasions_are_found(source: str, target: str) -> None:
    assert f"forbidden {target}" in whats(source)


@pytest.mark.parametrize(
    "source",
    [
        "import subprocess\nsubprocess.run(cmd, shell=True)",
        "import subprocess as sp\nsp.run(cmd, shell=True)",
        "from subprocess import Popen\nPopen(cmd, shell=1)",
        "from subprocess import check_output as co\nco(cmd, shell=flag)",
        "import subprocess\nsubprocess.call(cmd, **{'shell': True})",
        "import subprocess\nsubprocess.call(cmd, **options)",
        "import subprocess\nsubprocess.Popen(cmd, -1, None, None, None, None, None, True, True)",
        "import functools, subprocess\nfunctools.partial(subprocess.run, shell=True)",
        "import sys\nsys.modules['subprocess'].run(cmd, shell=True)",
    ],
)
def test_shell_true_is_found(source: str) -> None:
    assert "subprocess." in whats(source)
    assert "shell" in whats(source)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import os\ngetattr(os, name)('ls')", "dynamic getattr on os"),
        ("__builtins__[key](x)", "dynamic subscript on builtins"),
        ("globals()[name](x)", "dynamic subscript on module namespace"),
        ("import sys\nsys.modules[name]", "dynamic subscript on sys.modules"),
        ("getattr(__builtins__, ''.join(c for c in 'eval'))(x)", "dynamic getattr on builtins"),
        ("from os import *\nsystem('ls')", "star import from os"),
        ("().__class__.__bases__[0].__subclasses__()", "forbidden attribute __subclasses__"),
        ("f.__globals__['os']", "forbidden attribute __globals__"),
        ("getattr(f, '__glo' + 'bals__')", "forbidden attribute __globals__"),
    ],
)
def test_what_cannot_be_known_is_a_finding(source: str, expected: str) -> None:
    assert expected in whats(source)


@pytest.mark.parametrize(
    "source",
    [
        "import re\npattern = re.compile(r'x+')",
        "import subprocess\nsubprocess.run(['ls', '-l'], check=True)",
        "import subprocess\nsubprocess.run(['ls'], shell=False)",
        "import subprocess\nsubprocess.call(cmd, **{'check': True})",
        "import ast\nvalue = ast.literal_eval(text)",
        "import json\nobj = json.loads(text)",
        "import os\npath = os.path.join(a, b)\nenv = os.environ['HOME']\nenv2 = os.environ[key]",
        "def compile(src):\n    return src.strip()\n\ncompile(text)",
        "class Engine:\n    def eval(self, x):\n        return x\n\nEngine().eval(1)",
        "obj.eval(x)\nself.exec(y)",
        "getattr(obj, name)\nconfig[key]",
        "text = 'eval(x) and os.system are only words here'",
        "from mylib import system\nsystem()",
        "import yaml\nyaml.safe_load(text)",
    ],
)
def test_safe_code_has_no_findings(source: str) -> None:
    assert scan(source) == []


def test_non_python_artifacts_are_not_parsed() -> None:
    assert RULE.artifact(Artifact("docs/usage.md", "Run `eval(x)` and os.system('ls') at your peril.")) == []


def test_unparsable_python_is_a_finding_with_its_line() -> None:
    (finding,) = scan("def ok():\n    return 1\n\ndef broken(:\n")
    assert "not valid Python" in finding.what
    assert finding.line == 4


def test_one_finding_per_line_and_target() -> None:
    found = scan("eval(eval(x))\nexec(y)")
    assert [(f.line, f.what.split(":")[0]) for f in found] == [
        (1, "forbidden builtins.eval"),
        (2, "forbidden builtins.exec"),
    ]


def test_lists_are_configurable() -> None:
    rule = build_rule("forbidden_calls", {"forbidden": ["requests.*"], "shell_calls": []})
    found = rule.artifact(Artifact("a.py", "import requests\nrequests.get(url)\neval(x)"))
    assert [f.what.split(":")[0] for f in found] == ["forbidden requests.get"]


def _concat(pieces: list[str]) -> str:
    return " + ".join(repr(p) for p in pieces)


@st.composite
def split_name(draw: st.DrawFn, name: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, len(name) - 1), max_size=len(name) - 1)))
    bounds = [0, *cuts, len(name)]
    return [name[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["eval", "exec", "compile", "__import__"]),
    data=st.data(),
    via=st.sampled_from(["getattr(__builtins__, {s})", "__builtins__[{s}]", "globals()[{s}]", "vars()[{s}]"]),
)
def test_any_split_of_a_forbidden_name_is_found(name: str, data: st.DataObject, via: str) -> None:
    pieces = data.draw(split_name(name))
    source = f"x = 1\nf = {via.format(s=_concat(pieces))}\nf(x)\n"
    found = scan(source)
    assert any(f.line == 2 and f"builtins.{name}" in f.what for f in found), source


@settings(max_examples=60, deadline=None)
@given(
    attr=st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True).filter(
        lambda a: a not in {"eval", "exec", "compile", "getattr", "vars", "globals", "locals", "breakpoint"}
    )
)
def test_getattr_with_a_known_harmless_name_is_allowed(attr: str) -> None:
    assert scan(f"import math\nvalue = getattr(math, {attr!r})") == []

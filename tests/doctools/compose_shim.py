"""``docker`` for the doc tests: ``docker compose ...`` with no Docker engine.

Every command is first parsed by docker-compose 1.29's own grammar (its docopt
usage strings, the ``docker-compose`` 1.29 distribution), so a misspelt command,
option or service fails the test. docker-compose 1.29 lives in its own virtualenv,
``.venv-tools`` (``make test`` installs it from tests/doctools/compose-tools.txt). Then:

* ``config`` runs the real ``docker-compose config``;
* ``run SERVICE ARGS`` runs ``l9 ARGS`` (the image's entrypoint) and ``exec SERVICE
  CMD`` runs ``CMD``, here, in the environment the compose file gives SERVICE
  (``docker-compose config``, so ``.env`` is read as compose reads it);
* ``up`` / ``stop`` / ``down`` / ``restart`` / ``ps`` / ``logs`` start, stop and show
  local ``l9 agent run`` processes for the services named in ``L9_DOC_EMULATE``
  (replicas from ``deploy.replicas`` or ``--scale``; a service whose environment
  changed is restarted, as compose recreates its containers);
* ``build`` and ``pull`` are only parsed.

What cannot be the same here: the processes connect to the test's Redis and
PostgreSQL (``L9_DOC_REDIS_URL``, ``L9_DOC_DATABASE_URL``) as administrator, in the
test's namespace, the graph goes to the Redis graph module instead of Neo4j,
container paths (volumes, secrets, ``/var/lib/l9``) map to folders under
``L9_DOC_STATE``, and no process serves the admin port (the containers' each have
their own network; here the replicas would share one; tests/integration/test_admin_port.py
tests the port). The ACL users themselves are tested in test_compose_acl.py.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
#: docker-compose 1.29 and the interpreter it is installed in (``make test`` installs both).
COMPOSE_TOOLS = ROOT / ".venv-tools" / "bin"
IMAGE_HOME = "/var/lib/l9"
PARSE = """
import json, sys
from compose.cli.docopt_command import DocoptDispatcher, NoSuchCommand
from compose.cli.main import TopLevelCommand
try:
    options, handler, command_options = DocoptDispatcher(
        TopLevelCommand, {"options_first": True, "version": "1.29"}).parse(sys.argv[1:])
except (SystemExit, NoSuchCommand) as exc:
    print(f"docker compose: not a valid command: {exc}", file=sys.stderr)
    sys.exit(2)
print(json.dumps({"command": options["COMMAND"], "options": command_options}))
"""


def fail(message: str, code: int = 2) -> None:
    print(f"docker (doc-test shim): {message}", file=sys.stderr)
    sys.exit(code)


def parse(args: list[str]) -> tuple[str, dict[str, Any]]:
    done = subprocess.run(
        [str(COMPOSE_TOOLS / "python"), "-c", PARSE, *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    if done.returncode != 0:
        fail(done.stderr.strip() or done.stdout.strip())
    parsed = json.loads(done.stdout)
    return parsed["command"], parsed["options"]


def resolved_config() -> dict[str, Any]:
    done = subprocess.run([str(COMPOSE_TOOLS / "docker-compose"), "config"], capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"docker-compose config failed: {done.stderr.strip()}", 1)
    return dict(yaml.safe_load(done.stdout))


class Project:
    def __init__(self) -> None:
        self.state = Path(os.environ["L9_DOC_STATE"])
        self.emulated = [s for s in os.environ.get("L9_DOC_EMULATE", "").split(",") if s]
        self.procs_file = self.state / "procs.json"

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The resolved compose file; ``stop`` and ``down`` need only the processes, not it."""
        return resolved_config()

    def service(self, name: str) -> dict[str, Any]:
        services = self.config["services"]
        if name not in services:
            fail(f"no such service: {name} (the compose file has {', '.join(sorted(services))})")
        return dict(services[name])

    # -- a service's environment, as its container would see it ----------------------------
    def mounts(self, name: str) -> dict[str, Path]:
        """Container path -> host path for a service: volumes, secrets, the image's home."""
        svc, out = self.service(name), {IMAGE_HOME: self.state / "containers" / name}
        for volume in svc.get("volumes", []):  # "source:target[:mode]", as docker-compose config prints
            source, target = volume.split(":")[:2]
            out[target] = Path(source) if source.startswith("/") else self.state / "volumes" / source
        for secret in svc.get("secrets", []):  # at /run/secrets/TARGET, TARGET defaulting to SOURCE
            target = secret.get("target") or secret["source"]
            target = target if target.startswith("/") else f"/run/secrets/{target}"
            out[target] = Path(self.config["secrets"][secret["source"]]["file"])
        for target, host in out.items():
            if host.suffix == "" and not host.exists():
                host.mkdir(parents=True, exist_ok=True)
            if target.startswith(IMAGE_HOME + "/"):  # a volume inside the home: link it there
                link = out[IMAGE_HOME] / target.removeprefix(IMAGE_HOME + "/")
                if not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(host)
        return out

    def host_path(self, mounts: dict[str, Path], value: str) -> str:
        for target in sorted(mounts, key=len, reverse=True):
            if value == target or value.startswith(target + "/"):
                return str(mounts[target]) + value[len(target) :]
        return value

    def compose_env(self, name: str) -> dict[str, str]:
        """The environment compose gives the service's containers."""
        return {k: "" if v is None else str(v) for k, v in self.service(name).get("environment", {}).items()}

    def env(self, name: str, extra: list[str] | None = None) -> dict[str, str]:
        """The environment of the service's processes here (see the module docstring)."""
        mounts = self.mounts(name)
        env = self.compose_env(name)
        env["L9_HOME"] = IMAGE_HOME
        env = {k: self.host_path(mounts, v) if v.startswith("/") else v for k, v in env.items()}
        for item in extra or []:
            key, _, value = item.partition("=")
            env[key] = value
        # each container has its own network; here the replicas would share one admin port
        for key in ("NEO4J_URL", "NEO4J_USER", "NEO4J_PASSWORD", "L9_ADMIN_PORT", "L9_ADMIN_HOST"):
            env.pop(key, None)
        env |= {
            "REDIS_URL": os.environ["L9_DOC_REDIS_URL"],
            "DATABASE_URL": os.environ["L9_DOC_DATABASE_URL"],
            "L9_NAMESPACE": os.environ["L9_DOC_NAMESPACE"],
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "COLUMNS": os.environ.get("COLUMNS", "80"),  # compose run gives a terminal this wide
        }
        extra_env: dict[str, str] = json.loads(os.environ.get("L9_DOC_ENV", "{}"))
        return env | extra_env

    # -- emulated containers -----------------------------------------------------------------
    def procs(self) -> dict[str, list[dict[str, Any]]]:
        if not self.procs_file.exists():
            return {}
        data = json.loads(self.procs_file.read_text())
        return {s: [p for p in ps if _alive(p["pid"])] for s, ps in data.items()}

    def save(self, procs: dict[str, list[dict[str, Any]]]) -> None:
        self.procs_file.write_text(json.dumps(procs))

    def start(self, name: str, n: int) -> dict[str, Any]:
        env = self.env(name)
        log = self.state / "logs" / f"{name}-{n}-{time.monotonic_ns()}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = self.service(name)["command"]
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                ["l9", *command], env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        return {"pid": proc.pid, "log": str(log), "env": _digest(self.compose_env(name))}

    def up(self, services: list[str], scale: dict[str, int], *, recreate: bool = False) -> None:
        procs = self.procs()
        for name in services or self.config["services"]:
            svc = self.service(name)
            if "tools" in svc.get("profiles", []):
                continue
            if name not in self.emulated:
                print(f"{name}: not started here (only {', '.join(self.emulated)} are emulated)")
                continue
            want = scale.get(name, svc.get("deploy", {}).get("replicas", 1))
            current = procs.get(name, [])
            stale = [p for p in current if recreate or p["env"] != _digest(self.compose_env(name))]
            stop(stale)
            current = [p for p in current if p not in stale]
            stop(current[want:])
            current = current[:want]
            current += [self.start(name, i) for i in range(len(current), want)]
            procs[name] = current
            print(f"{name}: {len(current)} running" + (" (recreated)" if stale else ""))
        self.save(procs)


def _digest(env: dict[str, str]) -> str:
    return json.dumps(env, sort_keys=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def stop(procs: list[dict[str, Any]]) -> None:
    for p in procs:
        os.kill(p["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(_alive(p["pid"]) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        if _alive(p["pid"]):
            os.kill(p["pid"], signal.SIGKILL)


def run_here(argv: list[str], env: dict[str, str]) -> int:
    return subprocess.run(argv, env=env).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "compose":
        fail(f"only `docker compose` is available in the doc tests, not `docker {' '.join(argv)}`")
    command, opts = parse(argv[1:])
    if command == "config":
        return subprocess.run([str(COMPOSE_TOOLS / "docker-compose"), *argv[1:]]).returncode
    project = Project()
    if command == "run":
        project.service(opts["SERVICE"])
        argv = ["l9", *filter(None, [opts["COMMAND"]]), *opts["ARGS"]]
        return run_here(argv, project.env(opts["SERVICE"], opts["-e"]))
    if command == "exec":
        return run_here([opts["COMMAND"], *opts["ARGS"]], project.env(opts["SERVICE"]))
    if command == "up":
        scale = {k: int(v) for k, _, v in (s.partition("=") for s in opts["--scale"])}
        project.up(opts["SERVICE"], scale, recreate=bool(opts["--force-recreate"]))
    elif command in ("stop", "down", "restart"):
        procs = project.procs()
        names = (opts.get("SERVICE") or list(procs)) if command != "down" else list(procs)
        for name in names:
            stop(procs.pop(name, []))
        project.save(procs)
        if command == "restart":
            project.up(names, {})
    elif command == "ps":
        for name, ps in sorted(project.procs().items()):
            for i, p in enumerate(ps, 1):
                print(f"{name}_{i}  pid {p['pid']}  running")
    elif command == "logs":
        for name in opts["SERVICE"] or list(project.procs()):
            for p in project.procs().get(name, []):
                lines = Path(p["log"]).read_text().splitlines(keepends=True)
                tail = opts.get("--tail") or "all"
                sys.stdout.write("".join(lines if tail == "all" else lines[-int(tail) :]))
    elif command not in ("build", "pull"):
        fail(f"`docker compose {command}` is not emulated in the doc tests")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

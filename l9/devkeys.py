"""Per-agent Ed25519 keys for local runs (``l9 demo --signing ed25519``).

Each agent process gets its own key file (``L9_HOME/agent-keys/<agent>.json``, mode 0600,
key id ``<agent>.dev``) and every process the public keys of all: the environment of a
compose deployment (``l9 deploy env``), made for the processes of one machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from envelope import Ed25519Signer


def local_agent_keys(home: Path, agents: Iterable[str]) -> dict[str, Ed25519Signer]:
    """The key of each of ``agents`` under ``home/agent-keys``, created when missing."""
    folder = home / "agent-keys"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    keys: dict[str, Ed25519Signer] = {}
    for agent in agents:
        path = folder / f"{agent}.json"
        if not path.exists():
            signer = Ed25519Signer.generate(f"{agent}.dev")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(signer.key_file_text())
        keys[agent] = Ed25519Signer.from_key_file(path)
    return keys


def key_path(home: Path, agent: str) -> Path:
    return home / "agent-keys" / f"{agent}.json"


def public_keys(keys: Mapping[str, Ed25519Signer]) -> dict[str, str]:
    """``L9_PUBLIC_KEYS`` of ``keys``: key id -> hex public key (what every process may hold)."""
    return {signer.key_id: signer.public_hex for signer in keys.values()}

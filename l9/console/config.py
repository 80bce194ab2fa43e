"""What ``l9 console`` is started with: where it listens, who may read, the write token, the
anchors' keys. One frozen value, checked once (:meth:`ConsoleConfig.check`).

The write token is ``L9_CONSOLE_TOKEN`` if set, else the content of ``--token-file``
(default ``L9_HOME/console-token``, created with a random token, mode 0600, on first use).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from envelope import Ed25519Signer, Signer, agent_of_key

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8089
TOKEN_ENV = "L9_CONSOLE_TOKEN"
#: Shortest token accepted (a generated one has 32 characters).
MIN_TOKEN_CHARS = 16
#: Who may read pages without signing in: loopback clients only, nobody, or everyone.
Reads = Literal["loopback", "signed-in", "open"]
READS: tuple[Reads, ...] = ("loopback", "signed-in", "open")


class ConsoleConfigError(ValueError):
    """A setting of the console that cannot be used (the message names it)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine's loopback."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: Path, *, create: bool) -> str:
    """The token in ``path``; a new random one written there (mode 0600) when ``create`` and
    the file does not exist."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another console made it meanwhile: use theirs
            return read_token(path, create=False)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return token
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConsoleConfigError(f"--token-file {path}: cannot read it ({exc.strerror or exc})") from None
    return check_token(token, f"--token-file {path}")


def check_token(token: str, where: str) -> str:
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConsoleConfigError(
            f"{where}: the console token must be at least {MIN_TOKEN_CHARS} characters, without spaces"
        )
    return token


def load_anchor_key(path: Path) -> Ed25519Signer:
    """An anchor's signing key file (``l9 deploy anchor-key``); its key id names the anchor."""
    try:
        return Ed25519Signer.from_key_file(path)
    except ValueError as exc:
        raise ConsoleConfigError(f"--anchor-key: {exc}") from None


@dataclass(frozen=True)
class ConsoleConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: The secret a writer signs in with (or sends as ``Authorization: Bearer``).
    token: str = field(default="", repr=False)
    reads: Reads = "loopback"
    #: Host names the console answers to besides its own address and loopback's names.
    allowed_hosts: tuple[str, ...] = ()
    #: Anchor name -> the key its answers are signed with when the form brings none.
    anchor_keys: Mapping[str, Signer] = field(default_factory=dict, repr=False)
    #: Seconds between two looks at what a live page shows.
    refresh_s: float = 1.0

    def check(self) -> ConsoleConfig:
        if not 0 < self.port < 65_536:
            raise ConsoleConfigError(f"--port {self.port}: not a TCP port (1 to 65535)")
        if self.reads not in READS:
            raise ConsoleConfigError(f"--reads {self.reads!r}: one of {', '.join(READS)}")
        check_token(self.token, "the console token")
        return self

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)

    def trusted_hosts(self) -> list[str]:
        """The ``Host`` headers answered (a DNS rebinding page gets 400): ``*`` when listening
        on every address with no ``--allowed-host`` given."""
        if self.host in ("0.0.0.0", "::") and not self.allowed_hosts:
            return ["*"]
        names = {"localhost", "127.0.0.1", "::1", "[::1]", self.host, *self.allowed_hosts}
        return sorted(names)


def anchor_keys(paths: list[Path]) -> dict[str, Signer]:
    """Anchor name -> its key, from ``--anchor-key`` files (two keys of one anchor: refused)."""
    keys: dict[str, Signer] = {}
    for path in paths:
        signer = load_anchor_key(path)
        anchor = agent_of_key(signer.key_id)
        if anchor in keys:
            raise ConsoleConfigError(f"--anchor-key {path}: a second key of anchor {anchor!r}")
        keys[anchor] = signer
    return keys

"""The Redis keys of the rules runtime, after ``bus.Keys``'s conventions, and the checks of
the names that go into them.

Every key starts with the namespace and carries a hash tag, so the keys one Lua script
touches share a Redis Cluster slot::

    <ns>:{<ns>.rules.<agent>.<window>.<key>}:window:entries   sorted set "<value> <envelope id>" by time
    <ns>:{<ns>.rules.<agent>.<window>.<key>}:window:ids       hash: envelope id -> time (its repeats)
    <ns>:{<ns>.rules.<agent>.<join>}:join:open                sorted set: open joins' keys by deadline
    <ns>:{<ns>.rules.<agent>.<join>}:join:key:<key>           hash: one key's join (state, parts)

A window's keys have a tag per key, so the windows of many keys spread over the cluster; a
join's keys share one tag (the script that completes a join also takes it off the open set).
``<key>`` is the key field's text, percent-encoded (no ``{``, ``}`` or ``:`` left in it), so
two keys never share a name.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from bus import Keys

from .errors import RuleError

#: Agent, window, join names: as the schema collection spells an identifier.
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: The longest key field a window or a join takes (characters).
KEY_MAX = 256


def check_name(what: str, name: str) -> str:
    """``name`` if it is an identifier (``a-z``, ``0-9``, ``_``, from a letter, at most 64)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise RuleError(what, f"{name!r} is not a name: want a-z, 0-9 and _, from a letter, at most 64")
    return name


def check_key(where: str, key: object) -> str:
    """``key`` if it is usable as a window's or a join's key: text of 1 to KEY_MAX characters."""
    if not isinstance(key, str):
        raise RuleError(where, f"the key must be text, got {type(key).__name__} {key!r:.60}")
    if not 0 < len(key) <= KEY_MAX:
        raise RuleError(where, f"the key must be 1 to {KEY_MAX} characters, got {len(key)}")
    return key


def check_envelope_id(where: str, envelope_id: object) -> str:
    if (
        not isinstance(envelope_id, str)
        or not 0 < len(envelope_id) <= 200
        or any(c.isspace() for c in envelope_id)
    ):
        raise RuleError(where, f"envelope id {envelope_id!r:.60}: want 1 to 200 characters, no spaces")
    return envelope_id


def _encoded(key: str) -> str:
    return quote(key, safe="")


def rules_tag(keys: Keys, *parts: str) -> str:
    """``{<ns>.rules.<part>.<part>...}``."""
    return "{" + ".".join((keys.namespace, "rules", *parts)) + "}"


def window_keys(keys: Keys, agent: str, window: str, key: str) -> tuple[str, str]:
    """The entries (sorted set) and the ids (hash) of one key of a window."""
    base = f"{keys.namespace}:{rules_tag(keys, agent, window, _encoded(key))}:window"
    return f"{base}:entries", f"{base}:ids"


def join_open_key(keys: Keys, agent: str, join: str) -> str:
    """The sorted set of a join's open keys, scored by deadline."""
    return f"{keys.namespace}:{rules_tag(keys, agent, join)}:join:open"


def join_key(keys: Keys, agent: str, join: str, key: str) -> str:
    """The hash of one key's join."""
    return f"{keys.namespace}:{rules_tag(keys, agent, join)}:join:key:{_encoded(key)}"

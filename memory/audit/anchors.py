"""What the signed checkpoints say before a verification walk (pure, no I/O): their
signatures and links, the files kept outside the trail, the anchors they give each chain
(its seq, chain hash and, version 2, Merkle root at the checkpoint), where to start, and
how many chains the trail has by their word (:func:`settle_layout`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .chains import Layout
from .checkpoints import Checkpoint
from .verify import Anchor, ChainRow, Damage, Problem


@dataclass
class CheckpointCheck:
    """What the checkpoints say before the walk: problems, trusted anchors, where to start,
    and the newest checkpoint trusted (the trail's own first, else one from outside)."""

    problems: list[Problem] = field(default_factory=list)
    anchors: list[Anchor] = field(default_factory=list)
    start: Checkpoint | None = None
    newest: Checkpoint | None = None


def check_checkpoints(
    in_trail: Sequence[Checkpoint],
    files: Sequence[tuple[str, Checkpoint]] | None,
    presented: tuple[str, Checkpoint] | None,
    trusted_keys: Mapping[str, bytes] | None,
) -> CheckpointCheck:
    """Signatures and links of the trail's checkpoints; files (``(path, checkpoint)``) must
    be checkpoints of this trail, each in the file its id names, and every checkpoint of the
    trail must have its file (``files`` None: no directory of files, nothing expected).
    Without ``trusted_keys`` signatures are not checked."""
    out = CheckpointCheck()
    if files is not None:
        _check_files(in_trail, files, out.problems)
    files = files or []
    previous: Checkpoint | None = None
    for cp in sorted(in_trail, key=lambda c: c.id):
        why = _untrusted(cp, trusted_keys)
        if why is not None:
            out.problems.append(Problem(Damage.BAD_CHECKPOINT_SIGNATURE, cp.seq, why))
        elif (link := cp.link_problem(previous)) is not None:
            out.problems.append(Problem(Damage.CHECKPOINT_LINK_BROKEN, cp.seq, link))
        else:
            out.anchors.extend(anchors_of(cp, f"checkpoint #{cp.id}"))
            out.newest = cp
        previous = cp
    own = out.newest
    by_id = {cp.id: cp for cp in in_trail}
    newest = max(in_trail, key=lambda c: c.id, default=None)
    outside = {(cp.id, cp.digest): (path, cp) for path, cp in [*files, *([presented] if presented else [])]}
    for path, cp in outside.values():
        trusted = _check_outside(cp, path, by_id, newest, trusted_keys, out.problems)
        if trusted:
            out.anchors.extend(anchors_of(cp, f"checkpoint file {path}"))
            if own is None and (out.newest is None or cp.id > out.newest.id):
                out.newest = cp
    if presented is not None and _untrusted(presented[1], trusted_keys) is None:
        out.start = presented[1]
    out.anchors = list({(a.seq, a.chain_hash, a.root, a.chains): a for a in out.anchors}.values())
    return out


def anchors_of(cp: Checkpoint, label: str) -> list[Anchor]:
    """The chain heads checkpoint ``cp`` vouches for: one anchor per non-empty chain."""
    if cp.version == 1:
        return [Anchor(seq, chained, label) for seq, chained in cp.chain_heads().values()]
    layout, chains = cp.layout, len(cp.heads)
    return [Anchor(h.seq(layout), h.chain_hash, label, h.root, chains) for h in cp.heads if h.size > 0]


def settle_layout(
    trail: Layout | None, heads: Mapping[int, ChainRow], check: CheckpointCheck
) -> tuple[Layout, list[Problem]]:
    """The layout to walk: the one the newest trusted checkpoint signs (else the trail's);
    problems where the trail's chain count (``trail``, None: unreadable), its head rows or
    other checkpoints disagree with it, all at seq 0 (they concern the trail as a whole).
    The anchors (and the start) of checkpoints of another layout are dropped from ``check``."""
    signed = check.newest.layout if check.newest is not None else None
    layout = signed or trail or Layout()
    problems = []
    if trail is None:
        problems.append(
            f"the trail's chain count (l9_audit.trail) is gone; walked as {layout.chains} chain(s)"
        )
    elif check.newest is not None and layout != trail:
        problems.append(
            f"the trail says {trail.chains} chain(s) but checkpoint #{check.newest.id} signs the heads of "
            f"{layout.chains}: the chains are walked as it says"
        )
    for chain, row in sorted(heads.items()):
        if chain >= layout.chains and row.size > 0:
            problems.append(
                f"chain {chain}'s head row says {row.size} entries, "
                f"but the trail has {layout.chains} chain(s)"
            )
    foreign = {a.label: a.chains for a in check.anchors if a.chains != layout.chains}
    for label, chains in foreign.items():
        problems.append(
            f"{label} signs {chains} chain(s), the trail has {layout.chains}: its heads are not used"
        )
    check.anchors = [a for a in check.anchors if a.chains == layout.chains]
    if check.start is not None and check.start.layout != layout:
        check.start = None
    return layout, [Problem(Damage.CHAIN_COUNT_CHANGED, 0, why) for why in problems]


def _check_files(
    in_trail: Sequence[Checkpoint], files: Sequence[tuple[str, Checkpoint]], problems: list[Problem]
) -> None:
    """Each file holds the checkpoint its name gives; each checkpoint of the trail has its file.
    A newer checkpoint's file overwritten with an older one's content would otherwise read as
    that older checkpoint, and the trail rolled back to it would pass; with the files gone, the
    copy outside the database that detects a rollback is gone."""
    names = set()
    for path, cp in files:
        name = Path(path).name
        names.add(name)
        if name != cp.file_name():
            problems.append(
                Problem(
                    Damage.CHECKPOINT_FILE_MISNAMED,
                    cp.seq,
                    f"{path} holds checkpoint #{cp.id} (seq {cp.seq}), which belongs in {cp.file_name()}: "
                    "a file overwritten with another checkpoint's content hides a rollback",
                )
            )
    where = str(Path(files[0][0]).parent) if files else "the checkpoint directory"
    for cp in in_trail:
        if cp.file_name() not in names:
            problems.append(
                Problem(
                    Damage.CHECKPOINT_FILE_MISSING,
                    cp.seq,
                    f"checkpoint #{cp.id} (seq {cp.seq}) has no file ({cp.file_name()}) in {where}: "
                    "the copy outside the database is gone, so a rollback to before it goes unseen",
                )
            )


def _untrusted(cp: Checkpoint, trusted_keys: Mapping[str, bytes] | None) -> str | None:
    return None if trusted_keys is None else cp.signature_problem(trusted_keys)


def _check_outside(
    cp: Checkpoint,
    path: str,
    by_id: Mapping[int, Checkpoint],
    newest: Checkpoint | None,
    trusted_keys: Mapping[str, bytes] | None,
    problems: list[Problem],
) -> bool:
    """Record what is wrong with a checkpoint held outside the trail; True when it is an anchor."""
    why = _untrusted(cp, trusted_keys)
    if why is not None:
        problems.append(Problem(Damage.BAD_CHECKPOINT_SIGNATURE, cp.seq, f"{path}: {why}"))
        return False
    mine = by_id.get(cp.id)
    if mine is None and (newest is None or newest.id < cp.id):
        have = f"#{newest.id} (seq {newest.seq})" if newest else "none"
        problems.append(
            Problem(
                Damage.ROLLED_BACK,
                cp.seq,
                f"{path}: checkpoint #{cp.id} (seq {cp.seq}) "
                f"is not in the trail, whose newest checkpoint is {have}: "
                "the trail presents an older state than this checkpoint vouches for",
            )
        )
    elif mine is None or mine.digest != cp.digest:
        problems.append(
            Problem(
                Damage.UNKNOWN_CHECKPOINT,
                cp.seq,
                f"{path}: the trail's checkpoint #{cp.id} is not this one (another trail, or replaced)",
            )
        )
    return True

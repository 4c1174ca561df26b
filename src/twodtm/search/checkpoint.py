"""Checkpoints of the global search: merged statistics and the chunks already done.

File layout: a magic line, a line ``<sha256 hex> <payload length>``, then the
payload (``torch.save`` of plain tensors, ints and strings, read back with
``weights_only=True``). The file is written beside its target, flushed to disk and
renamed over it, so a killed run leaves the previous checkpoint or the new one,
never half of one; a truncated or altered file fails the length or checksum test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from twodtm.errors import CheckpointError
from twodtm.io.atomic import atomic_path
from twodtm.search.space import Chunk
from twodtm.search.statistics import SearchStatistics

__all__ = [
    "Checkpoint",
    "fingerprint",
    "load_checkpoint",
    "require_same_search",
    "save_checkpoint",
]

_MAGIC = b"TWODTM-CHECKPOINT 1\n"
_FIX = "delete it or pass --restart to start the search again"


@dataclass(frozen=True)
class Checkpoint:
    """A resumable state of one search.

    Attributes
    ----------
    fingerprint : str
        Hash of everything that determines the result (see ``fingerprint``).
    settings : dict
        The JSON-able settings hashed into ``fingerprint``, to name what changed.
    chunks : tuple[Chunk, ...]
        The run's plan: every chunk of the search, in order.
    done : frozenset[Chunk]
        Chunks whose statistics are merged into ``statistics``.
    statistics : SearchStatistics
        Merged statistics of the ``done`` chunks (CPU).
    """

    fingerprint: str
    settings: dict[str, Any]
    chunks: tuple[Chunk, ...]
    done: frozenset[Chunk]
    statistics: SearchStatistics

    @property
    def remaining(self) -> list[Chunk]:
        """Chunks of the plan still to search, in plan order."""
        return [c for c in self.chunks if c not in self.done]


def fingerprint(settings: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``settings`` (key order does not matter).

    Examples
    --------
    >>> fingerprint({"a": 1, "b": [2, 3]}) == fingerprint({"b": [2, 3], "a": 1})
    True
    >>> fingerprint({"a": 1}) == fingerprint({"a": 2})
    False
    >>> import hashlib
    >>> fingerprint({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()
    True
    """
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _encode(checkpoint: Checkpoint) -> bytes:
    s = checkpoint.statistics
    state = {
        "fingerprint": checkpoint.fingerprint,
        "settings": json.dumps(checkpoint.settings, sort_keys=True, default=str),
        "chunks": torch.tensor([[c.start, c.stop] for c in checkpoint.chunks]),
        "done": torch.tensor(sorted([c.start, c.stop] for c in checkpoint.done)),
        "mip": s.mip.cpu(),
        "best_index": s.best_index.cpu(),
        "sum": s.sum.cpu(),
        "sum_sq": s.sum_sq.cpu(),
        "count": int(s.count),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically, with its checksum.

    The bytes are flushed to disk before the rename, so even a power cut leaves
    either the old or the new checkpoint.
    """
    payload = _encode(checkpoint)
    digest = hashlib.sha256(payload).hexdigest()
    header = _MAGIC + f"{digest} {len(payload)}\n".encode("ascii")
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        handle.write(header + payload)
        handle.flush()
        os.fsync(handle.fileno())


def _split(raw: bytes, file: Path) -> bytes:
    if not raw.startswith(_MAGIC):
        raise CheckpointError(f"{file}: not a twodtm checkpoint (bad header); {_FIX}.")
    line_end = raw.find(b"\n", len(_MAGIC))
    fields = raw[len(_MAGIC) : line_end].split() if line_end > 0 else []
    if len(fields) != 2 or not fields[1].isdigit():
        raise CheckpointError(f"{file}: checkpoint header is damaged; {_FIX}.")
    payload = raw[line_end + 1 :]
    if len(payload) != int(fields[1]):
        raise CheckpointError(
            f"{file}: checkpoint is truncated ({len(payload)} of {int(fields[1])} "
            f"bytes); {_FIX}."
        )
    if hashlib.sha256(payload).hexdigest() != fields[0].decode("ascii", "replace"):
        raise CheckpointError(f"{file}: checkpoint checksum does not match; {_FIX}.")
    return payload


def _chunks(table: torch.Tensor) -> list[Chunk]:
    return [Chunk(int(a), int(b)) for a, b in table.reshape(-1, 2).tolist()]


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint written by ``save_checkpoint``.

    Raises
    ------
    CheckpointError
        The file is unreadable, truncated, fails its checksum, or its content is
        inconsistent; it is never silently used.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{file}: cannot read the checkpoint ({err})") from None
    payload = _split(raw, file)
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True)
        statistics = SearchStatistics(
            mip=state["mip"],
            best_index=state["best_index"],
            sum=state["sum"],
            sum_sq=state["sum_sq"],
            count=int(state["count"]),
        )
        checkpoint = Checkpoint(
            fingerprint=str(state["fingerprint"]),
            settings=json.loads(state["settings"]),
            chunks=tuple(_chunks(state["chunks"])),
            done=frozenset(_chunks(state["done"])),
            statistics=statistics,
        )
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise CheckpointError(
            f"{file}: checkpoint content is invalid ({err}); {_FIX}."
        ) from None
    if not checkpoint.done <= set(checkpoint.chunks):
        raise CheckpointError(
            f"{file}: checkpoint lists chunks outside its plan; {_FIX}."
        )
    return checkpoint


def _changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the settings that differ between ``old`` and ``new``."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += [f"{key}.{name}" for name in _changed_settings(a, b)]
        elif a != b:
            names.append(key)
    return names


def require_same_search(
    checkpoint: Checkpoint, settings: dict[str, Any], path: str | os.PathLike[str]
) -> None:
    """Refuse a checkpoint written for different settings.

    Raises
    ------
    CheckpointError
        Naming the settings that changed and the two ways out.
    """
    if checkpoint.fingerprint == fingerprint(settings):
        return
    changed = ", ".join(_changed_settings(checkpoint.settings, settings)) or "inputs"
    raise CheckpointError(
        f"{path}: this checkpoint belongs to a different search (changed: {changed}); "
        "restore the previous configuration to resume, or pass --restart to discard "
        "the checkpoint and search from the beginning."
    )

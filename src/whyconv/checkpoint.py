"""Per-seed checkpoints at the end of every epoch, so an interrupted cell resumes where it stopped.

A checkpoint holds the whole training state (parameters, optimizer state, step), the per-epoch
history and the time spent, serialized with msgpack (flax.serialization; nothing is pickled)
and written atomically. It carries a fingerprint of everything that shapes training: the cell,
the seed, the data, the params and the training code. A checkpoint whose fingerprint differs
is never reused. Data order and dropout keys derive from (seed, epoch, step), so a resumed run
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import jax
from flax import serialization

from whyconv.atomic import atomic_path

# The code whose change makes old checkpoints meaningless.
TRAINING_CODE = [Path(__file__).with_name(name) for name in ("layers.py", "models.py", "training.py")]


def fingerprint(config: dict) -> str:
    """A digest of `config` (JSON-able) and of the training code."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in TRAINING_CODE:
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class Restored:
    state: object
    history: list[dict[str, float]]
    seconds: float


class CheckpointStore:
    """Checkpoints of one cell's seeds: `<folder>/seed<k>.msgpack`."""

    def __init__(self, folder: Path, config: dict):
        self.folder = folder
        self.config = config

    def _path(self, seed: int) -> Path:
        return self.folder / f"seed{seed}.msgpack"

    def _fingerprint(self, seed: int) -> str:
        return fingerprint({**self.config, "seed": seed})

    def save(self, seed: int, state, history: list[dict[str, float]], seconds: float) -> None:
        if jax.process_index() != 0:  # on several hosts, every process holds the same state: one writes
            return
        payload = {
            "fingerprint": self._fingerprint(seed),
            "state": serialization.to_state_dict(state),
            "history": history,
            "seconds": seconds,
        }
        with atomic_path(self._path(seed)) as tmp:
            tmp.write_bytes(serialization.msgpack_serialize(payload))

    def load(self, seed: int, template) -> Restored | None:
        """The saved state (shaped like `template`), or None if absent or from other settings."""
        path = self._path(seed)
        if not path.is_file():
            return None
        try:
            payload = serialization.msgpack_restore(path.read_bytes())
        except Exception:  # an unreadable checkpoint is as good as none: train from scratch
            return None
        if payload.get("fingerprint") != self._fingerprint(seed):
            return None
        state = serialization.from_state_dict(template, payload["state"])
        history = [dict(row) for row in payload["history"]]
        return Restored(state, history, float(payload["seconds"]))

    def clear(self) -> None:
        for path in self.folder.glob("seed*.msgpack"):
            path.unlink()
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

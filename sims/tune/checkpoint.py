"""The tune checkpoint: one ``.npz`` (no pickle) holding the raw params, the optimiser
state's leaves (adam's, or an evolution strategy's) and the metadata (JSON text), written
atomically.

Format 2 (``CHECKPOINT_FORMAT``) records each training scenario's budget mode; format 1
used one mode for all and is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from narset_jax.atomic import atomic_path
from narset_jax.errors import UserError
from sims.tune.params_map import TUNED
from sims.tune.training import History, TrainState

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "load_checkpoint",
    "read_checkpoint_meta",
    "save_checkpoint",
]

CHECKPOINT = "checkpoint.npz"
CHECKPOINT_FORMAT = 2  # 2: per-scenario budget modes (format 1 used one mode for all)


def save_checkpoint(path: Path, state: TrainState, history: History,
                    meta: dict[str, Any]) -> None:
    """Write ``state``, ``history`` and ``meta`` (JSON-ready) to ``path`` atomically."""
    arrays = {f"raw_{i}": np.asarray(state.raw[n]) for i, n in enumerate(TUNED)}
    for i, leaf in enumerate(jax.tree.leaves(state.opt_state)):
        arrays[f"opt_{i}"] = np.asarray(leaf)
    full = dict(meta, iteration=state.iteration, history=history.to_dict(),
                tuned=list(TUNED), format=CHECKPOINT_FORMAT)
    arrays["meta"] = np.array(json.dumps(full))
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The metadata of a checkpoint (a ``UserError`` if unreadable or of another format)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path}: unreadable checkpoint: {err}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return meta


def load_checkpoint(path: Path, template: TrainState,
                    history_cls: type = History) -> tuple[TrainState, Any, dict]:
    """Restore ``TrainState`` and the history into the structure of ``template`` (a fresh
    ``TrainState`` of the same run). ``history_cls``: [`sims.tune.History`][], or
    [`sims.tune.es.ESHistory`][] for an evolution-strategy run (whose ``opt_state`` is the
    strategy's state).

    **Returns:** ``(state, history, meta)``.
    """
    meta = read_checkpoint_meta(path)
    if meta.get("tuned") != list(TUNED):
        raise UserError(f"{path}: checkpoint tunes different fields than this version")
    with np.load(path, allow_pickle=False) as data:
        raw = {}
        for i, n in enumerate(TUNED):
            arr = data[f"raw_{i}"]
            ref = template.raw[n]
            if arr.shape != ref.shape or arr.dtype != ref.dtype:
                raise UserError(f"{path}: raw {n} has {arr.dtype}{arr.shape}, "
                                f"expected {ref.dtype}{ref.shape}")
            raw[n] = jnp.asarray(arr)
        leaves, treedef = jax.tree.flatten(template.opt_state)
        n_saved = sum(1 for k in data.files if k.startswith("opt_"))
        if n_saved != len(leaves):
            raise UserError(f"{path}: optimiser state has {n_saved} arrays, expected "
                            f"{len(leaves)}")
        new = []
        for i, ref in enumerate(leaves):
            arr = data[f"opt_{i}"]
            ref = np.asarray(ref)
            if arr.shape != ref.shape or arr.dtype != ref.dtype:
                raise UserError(f"{path}: optimiser array {i} has {arr.dtype}{arr.shape}, "
                                f"expected {ref.dtype}{ref.shape}")
            new.append(jnp.asarray(arr))
    state = TrainState(raw=raw, opt_state=jax.tree.unflatten(treedef, new),
                       iteration=int(meta["iteration"]))
    return state, history_cls.from_dict(meta["history"]), meta

"""Checkpoints of a training run: what must match to resume (data, settings, trainer code, torch) and the atomic save/load."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from b2s.errors import warn
from b2s.files import atomic_write
from b2s.model.config import TrainConfig

#: Bumped when the checkpoint layout changes, so old files are ignored instead of misread.
CHECKPOINT_FORMAT = 3


def data_fingerprint(X: Any) -> str:
    """A content hash of the model input (shape, sparsity pattern and values)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(tuple(X.shape)).encode())
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        for arr in (X.indptr.astype(np.int64), X.indices.astype(np.int64), np.asarray(X.data, dtype=np.float32)):
            h.update(np.ascontiguousarray(arr).tobytes())
    else:
        h.update(np.ascontiguousarray(np.asarray(X, dtype=np.float32)).tobytes())
    return h.hexdigest()


def trainer_code_version() -> str:
    """Hash of the trainer's and the model's source files: any code change makes old checkpoints stale."""
    h = hashlib.blake2b(digest_size=8)
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("train.py", "config.py", "checkpoint.py", "device.py", "vae.py"):
        with open(os.path.join(here, name), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def run_fingerprint(X: Any, config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: data, every parameter that shapes the
    trajectory, the engine, the trainer's code and torch.

    ``epoch_num`` is not in it but checked by :func:`_checkpoint_mismatch`: epochs 1..k do not
    depend on it, so a checkpoint of epoch k <= ``epoch_num`` (same ``patience``) is exactly the
    state an uninterrupted run reaches at epoch k. Options that only change logging or when
    checkpoints are written (``log_every``, ``checkpoint_every``, paths) are left out.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "engine": "native",
        "trainer_code": trainer_code_version(),
        "torch": str(torch.__version__),
        "data": data_fingerprint(X),
        "shape": [int(s) for s in X.shape],
        "hidden_size": int(config.hidden_size),
        "batch_size": int(config.batch_size),
        "learning_rate": float(config.learning_rate),
        "weight_decay": float(config.weight_decay),
        "patience": int(config.patience),
        "beta": float(config.beta),
        "seed": int(config.seed),
        "amp": str(config.amp),
        "free_bits": float(config.free_bits),
        "kl_warmup": int(config.kl_warmup),
        "reparam": str(config.reparam),
        "vae_genes": int(config.vae_genes),
        "device_type": device.type,
    }


def _checkpoint_mismatch(ckpt: Any, fingerprint: dict[str, Any], epoch_num: int) -> str | None:
    """Why checkpoint ``ckpt`` cannot be resumed under ``fingerprint`` / ``epoch_num`` (None: it can)."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("fingerprint"), dict):
        return "it is not a checkpoint of this trainer"
    old = ckpt["fingerprint"]
    diff = [k for k in fingerprint if old.get(k) != fingerprint[k]]
    diff += [k for k in old if k not in fingerprint]
    if diff:
        opaque = {"data": "model input", "shape": "model input shape", "trainer_code": "trainer code",
                  "format": "checkpoint format"}
        parts = [opaque[k] if k in opaque else f"{k} {old.get(k)} (now {fingerprint.get(k)})" for k in diff]
        return "it was made with other " + ", ".join(parts)
    if int(ckpt.get("epoch", 0)) > int(epoch_num):
        return f"it is at epoch {int(ckpt['epoch'])}, beyond --epoch_num {int(epoch_num)}"
    return None


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def set_numpy_state(state: dict[str, Any]) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached"]))


def load_checkpoint(path: str, fingerprint: dict[str, Any], device: torch.device,
                     epoch_num: int) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists, is readable and matches; otherwise None (with a
    ``WARNING:`` line saying why it is ignored)."""
    if not os.path.exists(path):
        return None
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # corrupted by something else than us (we write atomically)
        warn(f"checkpoint {path} is unreadable ({type(err).__name__}); ignoring it and training from scratch")
        return None
    why = _checkpoint_mismatch(ckpt, fingerprint, epoch_num)
    if why is not None:
        warn(f"checkpoint {path} does not match this run ({why}); ignoring it and training from scratch")
        return None
    return ckpt

"""The trainer's settings (:class:`TrainConfig`, per-engine defaults, epochs from a step budget) and its result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from b2s.errors import InputError
from b2s.model.device import AMP_CHOICES
from b2s.model.vae import REPARAM_CHOICES

HISTORY_COLUMNS = ["epoch", "loss", "recon", "kl"]


#: Training settings when the run leaves them unset, per engine. omicverse's are the seed's (its
#: generation is the decoder's output and needs 3500 epochs with early stop by ``patience``). The
#: native ones are chosen on the realism benchmark's within-type metrics (benchmarks/README.md,
#: "Within-type realism"): the VAE must reproduce each cell's deviations from its type, which takes
#: thousands of optimizer steps, not the seed's few dozen. There they keep a real part of the
#: within-type structure of real cells (NB counts from each type's mean keep none) with typing and
#: marker r unchanged. Modelling only the most variable genes (the others take their type's mean
#: rate) makes a step several times cheaper and keeps nearly all genes that carry that structure;
#: KL weight 0.1 beat the seed's 4, a higher learning rate lost.
#: The native ``epoch_num`` (None) follows :data:`NATIVE_STEPS`.
ENGINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "native": {"epoch_num": None, "learning_rate": 1e-3, "batch_size": 128, "vae_genes": 2000, "beta": 0.1},
    "omicverse": {"epoch_num": 3500, "learning_rate": 1e-4, "batch_size": 512, "vae_genes": 0, "beta": 4.0},
}


#: Optimizer steps of the native engine when ``--epoch_num`` is unset: a budget in steps, not
#: epochs, so a large reference trains as long as a small one (each epoch of it holds more steps).
NATIVE_STEPS = 2400


def default_epochs(n_cells: int, batch_size: int, steps: int = NATIVE_STEPS) -> int:
    """Epochs that hold about ``steps`` optimizer steps (batches) of ``batch_size`` over ``n_cells``."""
    return max(1, math.ceil(steps / max(1, math.ceil(n_cells / batch_size))))


@dataclass
class TrainConfig:
    """Hyper-parameters and run options (defaults = omicverse's Bulk2Single / the pipeline's params)."""

    hidden_size: int = 256
    batch_size: int = 512
    learning_rate: float = 1e-4
    weight_decay: float = 5e-4
    epoch_num: int = 3500
    patience: int = 50
    beta: float = 4.0
    seed: int = 42
    device: str = "auto"
    checkpoint_path: str | None = None
    checkpoint_every: int = 50
    log_every: int = 50
    history_path: str | None = None
    amp: str = "auto"  # auto: bf16 autocast where the hardware computes bf16 natively; on | off
    # nats per latent dimension not charged by the KL term (b2s.model.vae.kl_penalty): keeps the KL off
    # collapse, so the bundled data tell all types apart after few epochs; with calibrated counts
    # the seed's 0 did as well on the Hao data (benchmarks/README.md, realism section).
    free_bits: float = 0.5
    kl_warmup: int = 0  # epochs over which beta rises linearly from beta/kl_warmup to beta
    reparam: str = "standard"  # standard | omicverse (b2s.model.vae.BetaVAE)
    # genes inside the VAE: the model input's most variable (b2s.model.vae.variable_genes); 0 = all
    vae_genes: int = 0

    def validate(self) -> None:
        """Raise :class:`InputError` naming the parameter when a value cannot work."""
        positive = {
            "hidden_size": self.hidden_size,
            "batch_size": self.batch_size,
            "epoch_num": self.epoch_num,
            "patience": self.patience,
            "checkpoint_every": self.checkpoint_every,
            "log_every": self.log_every,
        }
        for name, value in positive.items():
            if int(value) != value or value < 1:
                raise InputError(f"--{name} {value} must be a whole number >= 1; pass e.g. --{name} {getattr(TrainConfig, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise InputError(f"--learning_rate {self.learning_rate} must be > 0; pass e.g. --learning_rate 1e-4")
        if self.amp not in AMP_CHOICES:
            raise InputError(f"--amp {self.amp} is not one of {', '.join(AMP_CHOICES)}; pass --amp auto")
        if not (self.weight_decay >= 0 and self.beta >= 0):
            raise InputError(f"weight_decay {self.weight_decay} and beta {self.beta} must be >= 0; use 5e-4 and 4")
        if not (self.free_bits >= 0 and math.isfinite(self.free_bits)):
            raise InputError(f"--free_bits {self.free_bits} must be >= 0; pass e.g. --free_bits {TrainConfig.free_bits}")
        if int(self.kl_warmup) != self.kl_warmup or self.kl_warmup < 0:
            raise InputError(f"--kl_warmup {self.kl_warmup} must be a whole number >= 0; pass e.g. --kl_warmup 0")
        if int(self.vae_genes) != self.vae_genes or self.vae_genes < 0:
            raise InputError(f"--vae_genes {self.vae_genes} must be a whole number >= 0 (0: all genes); pass e.g. --vae_genes 2000")
        if self.reparam not in REPARAM_CHOICES:
            raise InputError(f"--reparam {self.reparam} is not one of {', '.join(REPARAM_CHOICES)}; pass --reparam standard")

    def beta_at(self, epoch: int) -> float:
        """beta used in (1-based) ``epoch``: linear warm-up over ``kl_warmup`` epochs, then ``beta``."""
        if self.kl_warmup <= 0:
            return float(self.beta)
        return float(self.beta) * min(1.0, epoch / self.kl_warmup)


@dataclass
class TrainResult:
    """Outcome of :func:`train_vae` (state_dict holds the BEST epoch's weights as CPU tensors)."""

    state_dict: dict[str, torch.Tensor]
    history: pd.DataFrame  # columns epoch (1-based), loss, recon, kl: per-epoch sums of batch means
    best_epoch: int
    best_loss: float
    epochs_run: int
    device: str
    seconds: float
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    genes: np.ndarray | None = None  # model-input columns the VAE was trained on (None: all)

"""Trainer for the beta-VAE: device choice, seeded mini-batches, early stopping, atomic checkpoints, resume.

Behaviour follows omicverse 2.3.2's ``train_vae`` (design.md section 2): AdamW (lr 1e-4, weight decay
5e-4, betas 0.9/0.999), shuffled batches of 512 (last one partial), loss ``MSE + beta * KL`` with
beta 4; the epoch loss is the SUM of the per-batch mean losses; the best epoch (strictly lower
summed loss) is kept and training stops after ``patience`` consecutive epochs without improvement.

Differences made for speed, none of which changes the model or the loss:
- the whole model input lives in one tensor on the device (a CSR triplet when the input is
  sparse, densified per batch with a vectorised scatter), batches are index-selected from a
  ``torch.randperm`` permutation: no Dataset/DataLoader, no per-sample Python;
- losses are accumulated in a device tensor and synchronised once per epoch (no ``.item()`` per batch);
- the best weights are copied into preallocated tensors (no ``deepcopy`` of the model);
- fused AdamW where torch offers it.

Reproducibility: initial weights come from ``seed``; shuffling uses a CPU ``torch.Generator``
and sampling noise a device generator, both seeded from ``seed`` and saved in checkpoints, so a
run resumed from a checkpoint ends with bit-identical weights to an uninterrupted one (same device).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from b2s.errors import InputError, warn
from b2s.model.device import AMP_CHOICES, cpu_threads, resolve_amp, resolve_device
from b2s.model.vae import REPARAM_CHOICES, BetaVAE, GeneSubsetVAE, vae_loss, variable_genes

if TYPE_CHECKING:
    import anndata

#: Bumped when the checkpoint layout changes, so old files are ignored instead of misread.
CHECKPOINT_FORMAT = 3
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


class _DeviceMatrix:
    """The model input held once on the device; ``batch(rows)`` returns dense float32 rows.

    Sparse input stays sparse (CSR triplet) and only each mini-batch is densified, so a large
    reference never exists densely; row lengths are kept on the CPU so batch sizes are known
    without a device sync.
    """

    def __init__(self, X: Any, device: torch.device) -> None:
        self.device = device
        self.shape = tuple(int(s) for s in X.shape)
        if sp.issparse(X):
            X = sp.csr_matrix(X)
            if not X.has_canonical_format:
                X = X.copy()
                X.sum_duplicates()
            self.sparse = True
            indptr = X.indptr.astype(np.int64)
            self._row_nnz = np.diff(indptr)
            self._indptr = torch.from_numpy(indptr).to(device)
            self._indices = torch.from_numpy(X.indices.astype(np.int64)).to(device)
            self._data = torch.from_numpy(np.asarray(X.data, dtype=np.float32)).to(device)
        else:
            self.sparse = False
            self._dense = torch.as_tensor(np.asarray(X, dtype=np.float32)).to(device)

    def batch(self, rows: torch.Tensor, rows_cpu: np.ndarray) -> torch.Tensor:
        """Dense ``(len(rows), genes)`` float32 tensor of the given rows (``rows`` on the device)."""
        if not self.sparse:
            return self._dense.index_select(0, rows)
        counts_cpu = self._row_nnz[rows_cpu]
        total = int(counts_cpu.sum())
        out = torch.zeros((len(rows_cpu), self.shape[1]), dtype=torch.float32, device=self.device)
        if total == 0:
            return out
        counts = torch.from_numpy(counts_cpu).to(self.device, non_blocking=True)
        starts = self._indptr.index_select(0, rows)
        # position k of row r's run maps to starts[r] + k; build all positions at once
        row_of = torch.repeat_interleave(torch.arange(len(rows_cpu), device=self.device), counts, output_size=total)
        run_start = torch.cumsum(counts, 0) - counts
        pos = torch.arange(total, device=self.device) + torch.repeat_interleave(starts - run_start, counts, output_size=total)
        out[row_of, self._indices.index_select(0, pos)] = self._data.index_select(0, pos)
        return out


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
    for name in ("train.py", "device.py", "vae.py"):
        with open(os.path.join(here, name), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def _fingerprint(X: Any, config: TrainConfig, device: torch.device) -> dict[str, Any]:
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


def _make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW as omicverse; the fused kernel (one pass over all parameters) where torch has it."""
    kwargs = dict(lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.999))
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), **kwargs)


def _save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_history(history: pd.DataFrame, path: str) -> None:
    """Write ``epoch,loss,recon,kl`` atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    history.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _history_frame(rows: list[list[float]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    df["epoch"] = df["epoch"].astype(int)
    return df


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached"]))


def _load_checkpoint(path: str, fingerprint: dict[str, Any], device: torch.device,
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


def train_vae(X: Any, config: TrainConfig) -> TrainResult:
    """Train the beta-VAE on ``X`` (cells x genes, log-normalised; scipy CSR or ndarray).

    Prints progress every ``config.log_every`` epochs, checkpoints every ``config.checkpoint_every``
    epochs (and when training ends) if ``config.checkpoint_path`` is set, and resumes from a
    matching checkpoint. Returns the best epoch's weights and the loss history.
    """
    config.validate()
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    n_cells, n_genes = (int(s) for s in X.shape)
    if n_cells < 1 or n_genes < 1:
        raise InputError(f"model input has shape {n_cells} x {n_genes}; it needs cells and genes")
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())

    fingerprint = _fingerprint(X, config, device)
    genes = variable_genes(X, int(config.vae_genes))
    if len(genes) < n_genes:
        print(f"the VAE models the {len(genes)} most variable of {n_genes} model genes (--vae_genes "
              f"{config.vae_genes}); the others take their cell type's mean rate in GENERATE", flush=True)
        X = X[:, genes]
        n_genes = len(genes)
    data = _DeviceMatrix(X, device)

    # Initial weights from the seed, without touching the global torch RNG. Built on the CPU so
    # the same seed gives the same start on any device.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = BetaVAE(n_genes, config.hidden_size, config.reparam)
    model.to(device).train()
    optimizer = _make_optimizer(model, config)
    shuffle_gen = torch.Generator(device="cpu").manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)

    amp_dtype = resolve_amp(config.amp, device)
    print(f"precision: {'fp32' if amp_dtype is None else str(amp_dtype).removeprefix('torch.') + ' autocast'} "
          f"(--amp {config.amp})", flush=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # Best weights live in preallocated tensors; `live` are views of the parameters' storage.
    live = model.state_dict()
    best = {k: torch.empty_like(v) for k, v in live.items()}
    best_loss, best_epoch, wait, start_epoch, stopped = math.inf, 0, 0, 0, False
    history: list[list[float]] = []
    resumed_from: int | None = None

    ckpt_path = config.checkpoint_path
    if ckpt_path:
        os.makedirs(os.path.dirname(os.path.abspath(ckpt_path)), exist_ok=True)
        for stale in glob.glob(glob.escape(ckpt_path) + ".tmp*"):  # left by a task killed mid-write
            with contextlib.suppress(OSError):
                os.remove(stale)
        ckpt = _load_checkpoint(ckpt_path, fingerprint, device, config.epoch_num)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            for k, v in ckpt["best"].items():
                best[k].copy_(v)
            best_loss, best_epoch, wait = float(ckpt["best_loss"]), int(ckpt["best_epoch"]), int(ckpt["wait"])
            start_epoch, stopped = int(ckpt["epoch"]), bool(ckpt["stopped"])
            # generator states are CPU byte tensors whatever the generator's device
            shuffle_gen.set_state(ckpt["shuffle_rng"].cpu())
            noise_gen.set_state(ckpt["noise_rng"].cpu())
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            _set_numpy_state(ckpt["numpy_rng"])
            history = [list(r) for r in ckpt["history"].tolist()]
            resumed_from = start_epoch
            warn(f"resuming from epoch {start_epoch} of {config.epoch_num} (checkpoint {ckpt_path}: same data, "
                 "settings and trainer code, so the result equals an uninterrupted run)")

    def save_checkpoint(epochs_done: int, done: bool) -> None:
        if ckpt_path:
            _save_atomic(
                {
                    "fingerprint": fingerprint,
                    "epoch": epochs_done,
                    "stopped": done,  # early-stopped: a rerun only reloads the result
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best": best,
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "wait": wait,
                    "shuffle_rng": shuffle_gen.get_state(),
                    "noise_rng": noise_gen.get_state(),
                    "numpy_rng": _numpy_state(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "history": torch.tensor(history, dtype=torch.float64).reshape(-1, len(HISTORY_COLUMNS)),
                },
                ckpt_path,
            )
        if config.history_path:
            write_history(_history_frame(history), config.history_path)

    bs = int(config.batch_size)
    acc = torch.zeros(3, dtype=torch.float64, device=device)
    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=amp_dtype))
        if amp_dtype is not None
        else contextlib.nullcontext
    )
    epoch = start_epoch
    t_train = time.perf_counter()
    # A checkpoint taken at the epoch limit continues when --epoch_num is raised.
    while not stopped and epoch < config.epoch_num:
        beta = config.beta_at(epoch + 1)
        perm_cpu = torch.randperm(n_cells, generator=shuffle_gen)
        perm = perm_cpu.to(device, non_blocking=True)
        perm_np = perm_cpu.numpy()
        acc.zero_()
        for start in range(0, n_cells, bs):
            xb = data.batch(perm[start:start + bs], perm_np[start:start + bs])
            with autocast():
                x_hat, mu, logvar = model(xb, noise_gen)
            loss, recon, kl = vae_loss(x_hat.float(), xb, mu.float(), logvar.float(), beta, config.free_bits)
            optimizer.zero_grad(set_to_none=True)
            if scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            acc += torch.stack((loss.detach(), recon.detach(), kl.detach())).to(torch.float64)
        epoch += 1
        loss_sum, recon_sum, kl_sum = acc.tolist()  # the one sync per epoch
        if not math.isfinite(loss_sum):
            raise InputError(
                f"training diverged at epoch {epoch} (loss {loss_sum}); check the model input for extreme "
                "values (it must be log-normalised) or lower --learning_rate"
            )
        history.append([epoch, loss_sum, recon_sum, kl_sum])
        # during a KL warm-up beta rises, so losses of different epochs are not comparable: the
        # latest epoch counts as the best until beta reaches its final value
        if loss_sum < best_loss or epoch < config.kl_warmup:
            best_loss, best_epoch, wait = loss_sum, epoch, 0
            for k, v in live.items():
                best[k].copy_(v)
        else:
            wait += 1
        stop = wait >= config.patience
        if epoch % config.log_every == 0 or epoch == start_epoch + 1 or stop or epoch == config.epoch_num:
            print(
                f"epoch {epoch}/{config.epoch_num} loss={loss_sum:.6f} recon={recon_sum:.6f} kl={kl_sum:.6f} "
                f"best={best_loss:.6f} ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
        if stop:
            print(f"early stopping at epoch {epoch}: no improvement for {config.patience} epochs", flush=True)
        stopped = stop
        if stop or epoch >= config.epoch_num or epoch % config.checkpoint_every == 0:
            save_checkpoint(epoch, stop)
    if config.history_path:  # also covers a resume from an already finished checkpoint
        write_history(_history_frame(history), config.history_path)
    train_seconds = time.perf_counter() - t_train
    epochs_here = epoch - start_epoch
    seconds = time.perf_counter() - t0
    print(
        f"best epoch {best_epoch} loss={best_loss:.6f} (epochs run {epoch}, device {device}, {seconds:.1f} s)",
        flush=True,
    )
    return TrainResult(
        state_dict={k: v.detach().cpu().clone() for k, v in best.items()},
        history=_history_frame(history),
        best_epoch=best_epoch,
        best_loss=best_loss,
        epochs_run=epoch,
        device=str(device),
        seconds=seconds,
        resumed_from=resumed_from,
        genes=genes if len(genes) < fingerprint["shape"][1] else None,
        extra={
            "seconds_per_epoch": train_seconds / epochs_here if epochs_here else None,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "input_storage": "sparse" if data.sparse else "dense",
            "precision": "fp32" if amp_dtype is None else f"{str(amp_dtype).removeprefix('torch.')} autocast",
            "config": asdict(config),
        },
    )


def trained_model(result: TrainResult, config: TrainConfig, n_model_genes: int) -> BetaVAE:
    """The trained VAE as GENERATE sees it: a :class:`~b2s.model.vae.GeneSubsetVAE` over the model input
    when it was trained on some genes only (``--vae_genes``), else a plain BetaVAE."""
    n = len(result.genes) if result.genes is not None else n_model_genes
    model = BetaVAE(n, config.hidden_size, config.reparam)
    model.load_state_dict(result.state_dict)
    return model if result.genes is None else GeneSubsetVAE(model, result.genes, n_model_genes)


def read_model_input(path: str, need_celltype: bool = False) -> anndata.AnnData:
    """Read ``model_input.h5ad`` (PREPROCESS output) with X as CSR float32, checking it can be trained on.

    Raises:
        InputError: missing/unreadable file, empty matrix, non-finite or negative values, or (with
            ``need_celltype``) no ``obs['celltype']``.
    """
    import anndata  # noqa: F811 (lazy: the trainer itself does not need it)

    if not os.path.isfile(path):
        raise InputError(f"--input {path} does not exist; pass the model_input.h5ad written by PREPROCESS")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as err:
        raise InputError(
            f"--input {path} is not a readable h5ad file ({type(err).__name__}); pass the model_input.h5ad written by PREPROCESS"
        ) from None
    if adata.n_obs < 1 or adata.n_vars < 1:
        raise InputError(f"--input {path} has {adata.n_obs} cells x {adata.n_vars} genes; it needs both")
    X = adata.X
    X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    values = X.data if sp.issparse(X) else X
    if not np.isfinite(values).all():
        raise InputError(f"--input {path} X contains NaN or infinite values; rerun PREPROCESS on clean counts")
    if values.size and values.min() < 0:
        raise InputError(f"--input {path} X has negative values (not log-normalised counts); pass PREPROCESS's model_input.h5ad")
    adata.X = X
    if need_celltype and "celltype" not in adata.obs:
        raise InputError(f"--input {path} has no obs['celltype']; pass the model_input.h5ad written by PREPROCESS")
    return adata

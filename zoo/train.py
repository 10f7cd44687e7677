"""Training, evaluation (scikit-learn metrics, computed afresh each call) and checkpoints."""

from __future__ import annotations

import contextlib
import math
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from qfx.zoo.data import Dataset, Split, load_dataset
from qfx.zoo.models import build_model


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits for ``x`` in eval mode without gradients (training flag restored)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


PRF = ("precision", "recall", "f1", "precision_macro", "recall_macro", "f1_macro")


def classification_metrics(
    logits: torch.Tensor, y: torch.Tensor, num_classes: int, full: bool = True
) -> dict[str, Any]:
    """accuracy, loss (cross-entropy) and, when ``full``, precision/recall/F1 (weighted and
    macro, scikit-learn) and the confusion matrix.

    Stateless: every call computes from these predictions only.
    """
    pred = logits.argmax(1).numpy()
    yt = y.numpy()
    labels = list(range(num_classes))
    out: dict[str, Any] = {
        "accuracy": float((pred == yt).mean()),
        "loss": float(F.cross_entropy(logits.float(), y)),
    }
    if not full:
        return out
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # here: a 0.7 s import

    for avg in ("weighted", "macro"):
        p, r, f, _ = precision_recall_fscore_support(yt, pred, labels=labels, average=avg, zero_division=0)
        sfx = "" if avg == "weighted" else "_macro"
        out[f"precision{sfx}"], out[f"recall{sfx}"], out[f"f1{sfx}"] = float(p), float(r), float(f)
    out["confusion_matrix"] = confusion_matrix(yt, pred, labels=labels).tolist()
    return out


def evaluate(model: nn.Module, split: Split, num_classes: int) -> dict[str, Any]:
    return classification_metrics(predict(model, split.x), split.y, num_classes)


def train(
    model: nn.Module,
    ds: Dataset,
    epochs: int = 40,
    batch_size: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
    weight_decay: float = 1e-4,
) -> list[dict[str, float]]:
    """AdamW + one-cycle schedule on ``ds.train``; returns per-epoch train loss and val accuracy."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(ds.train)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    history = []
    bar = tqdm(range(epochs), desc="train", disable=not progress, unit="epoch")
    for _ in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(ds.train.x[idx]), ds.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        va = evaluate(model, ds.val, ds.num_classes)["accuracy"]
        history.append({"train_loss": tot / n, "val_accuracy": va})
        bar.set_postfix(loss=f"{tot / n:.3f}", val_acc=f"{va:.3f}")
    model.eval()
    return history


def _plain(v: Any) -> Any:
    """Checkpoint metadata as plain Python types (so it loads with ``weights_only=True``)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist"):  # numpy / torch scalars and arrays
        return _plain(v.tolist())
    return v


def save_checkpoint(path: str | Path, model: nn.Module, info: dict[str, Any]) -> Path:
    """``info`` must hold model, dataset, seed; metrics are stored beside them (plain types only)."""
    p = Path(path)
    if p.suffix != ".pt":
        p.mkdir(parents=True, exist_ok=True)
        p = p / "model.pt"
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), **_plain(info)}, p)
    return p


class UnsafeCheckpointError(ValueError):
    """The file needs pickle (arbitrary code) to load and the user did not say they trust it."""


def read_checkpoint(p: Path, trust: bool = False) -> dict[str, Any]:
    """The checkpoint dict, read with ``torch.load(weights_only=True)``: no code in the file runs.

    A file that needs full unpickling is refused unless ``trust`` (``--trust-checkpoint``).
    """
    try:
        ck = torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        unsafe = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]  # code it would import
        if not unsafe:
            raise ValueError(f"{p}: not a checkpoint written by qfx train (unreadable: {str(e)[-120:]})") from None
        if not trust:
            raise UnsafeCheckpointError(
                f"{p}: refusing to load: it is not a plain tensors-and-values checkpoint and unpickling it could "
                f"run arbitrary code ({unsafe[0][:160]}); pass --trust-checkpoint only if you trust where it came from"
            ) from None
        ck = torch.load(p, weights_only=False, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - not a torch file at all
        raise ValueError(f"{p}: not a checkpoint written by qfx train ({type(e).__name__}: {e})") from e
    if not isinstance(ck, dict):
        raise ValueError(f"{p}: not a checkpoint written by qfx train (holds a {type(ck).__name__})")
    return ck


def load_checkpoint(path: str | Path, trust: bool = False) -> tuple[nn.Module, Dataset, dict[str, Any]]:
    """Rebuild the model named in the checkpoint and reload its dataset split with the same seed."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.pt"
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist (make one with: qfx train --out DIR)")
    ck = read_checkpoint(p, trust)
    try:
        name, dsname = ck["model"], ck["dataset"]
    except KeyError as e:
        raise ValueError(f"{p}: not a checkpoint written by qfx train (no {e} entry)") from e
    ds = load_dataset(dsname, seed=ck.get("seed", 0))
    model = build_model(name, ds.num_features, ds.num_classes, image_shape=ds.image_shape)
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, ds, ck


LARGE_MODEL_PARAMS = 1_000_000


def auto_threads(model: nn.Module) -> int:
    """CPU threads for running ``model``: 1 below ``LARGE_MODEL_PARAMS`` parameters, else every core.

    Small models lose to thread start-up and contention (jsc-tiny evaluation: 0.6 ms on one thread vs
    5-32 ms on two under load; training 2.0 s vs 6.0 s), and one thread also makes float summation order,
    and so the results of a seed, independent of the machine.
    """
    n = sum(p.numel() for p in model.parameters())
    return 1 if n < LARGE_MODEL_PARAMS else max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch CPU threads (None: unchanged), restoring the previous count after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

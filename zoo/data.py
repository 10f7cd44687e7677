"""Datasets: scikit-learn's bundled sets (embedded default) and the JSC jet-tagging set from a local file.

Every dataset is deduplicated, split with a fixed seed into train / val / test that never
overlap (test = ``test_size`` of all rows, val = ``val_size`` of the rest, stratified) and
standardised with training statistics only.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

JSC_FEATURES = [
    "j_zlogz",
    "j_c1_b0_mmdt",
    "j_c1_b1_mmdt",
    "j_c1_b2_mmdt",
    "j_c2_b1_mmdt",
    "j_c2_b2_mmdt",
    "j_d2_b1_mmdt",
    "j_d2_b2_mmdt",
    "j_d2_a1_b1_mmdt",
    "j_d2_a1_b2_mmdt",
    "j_m2_b1_mmdt",
    "j_m2_b2_mmdt",
    "j_n2_b1_mmdt",
    "j_n2_b2_mmdt",
    "j_mass_mmdt",
    "j_multiplicity",
]
JSC_CLASSES = ["j_g", "j_q", "j_w", "j_z", "j_t"]
JSC_H5_KEY = "t_allpar_new"
BUNDLED = ("digits", "wine", "breast_cancer", "iris")


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or has the wrong schema."""


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> Split:
        return self if n is None or n >= len(self) else Split(self.x[:n], self.y[:n])


@dataclass
class Dataset:
    name: str
    features: list[str]
    classes: list[str]
    train: Split
    val: Split
    test: Split
    image_shape: tuple[int, int, int] | None = None
    stats: dict[str, list[float]] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        aliases = {
            "train": "train",
            "val": "val",
            "validation": "val",
            "val_dataloader": "val",
            "test": "test",
            "test_dataloader": "test",
            "train_dataloader": "train",
        }
        if name not in aliases:
            raise KeyError(f"unknown split {name!r}; use one of {', '.join(aliases)}")
        return getattr(self, aliases[name])


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str], tuple | None]:
    from sklearn import datasets as skd

    b = getattr(skd, f"load_{name}")()
    feats = list(getattr(b, "feature_names", [f"x{i}" for i in range(b.data.shape[1])]))
    classes = [str(c) for c in b.target_names]
    shape = (1, 8, 8) if name == "digits" else None
    return b.data.astype(np.float32), b.target.astype(np.int64), feats, classes, shape


def _jsc_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        if JSC_H5_KEY not in f:
            raise DatasetError(f"{path}: no table {JSC_H5_KEY!r}; found {list(f.keys())}")
        table = f[JSC_H5_KEY][()]
    names = table.dtype.names or ()
    missing = [c for c in JSC_FEATURES + JSC_CLASSES if c not in names]
    if missing:
        raise DatasetError(f"{path}: table {JSC_H5_KEY!r} lacks column(s) {missing}")
    x = np.stack([table[c] for c in JSC_FEATURES], 1).astype(np.float32)
    y = np.stack([table[c] for c in JSC_CLASSES], 1).argmax(1).astype(np.int64)
    return x, y


def _jsc_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """OpenML hls4ml_lhc_jets_hlf CSV (a ``class`` column of g/q/w/z/t) or one-hot j_* columns."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read CSV ({e})") from e
    if not rows:
        raise DatasetError(f"{path}: empty CSV")
    cols = set(rows[0])
    label_cols = ["class"] if "class" in cols else JSC_CLASSES
    missing = [c for c in JSC_FEATURES + label_cols if c not in cols]
    if missing:
        raise DatasetError(f"{path}: CSV lacks column(s) {missing}")
    try:
        x = np.array([[float(r[c]) for c in JSC_FEATURES] for r in rows], dtype=np.float32)
        if label_cols == ["class"]:
            names = [c.removeprefix("j_") for c in JSC_CLASSES]
            y = np.array([names.index(r["class"].strip().strip("'\"").removeprefix("j_")) for r in rows])
        else:
            y = np.array([[float(r[c]) for c in JSC_CLASSES] for r in rows]).argmax(1)
    except ValueError as e:
        raise DatasetError(f"{path}: bad value in CSV ({e}); classes must be one of g, q, w, z, t") from e
    return x, y.astype(np.int64)


def load_dataset(name: str, seed: int = 0, test_size: float = 0.2, val_size: float = 0.2) -> Dataset:
    """``name``: a bundled set (digits, wine, breast_cancer, iris) or ``jsc:PATH`` / a .h5/.csv path."""
    shape = None
    if name in BUNDLED:
        x, y, feats, classes, shape = _bundled(name)
    else:
        path = Path(name.removeprefix("jsc:"))
        if not path.is_file():
            raise DatasetError(
                f"dataset {name!r}: no such file (bundled sets: {', '.join(BUNDLED)}; "
                "JSC: jsc:/path/to/file.h5 or .csv)"
            )
        x, y = _jsc_csv(path) if path.suffix.lower() == ".csv" else _jsc_h5(path)
        feats, classes = list(JSC_FEATURES), list(JSC_CLASSES)
    if not np.isfinite(x).all():
        raise DatasetError(f"dataset {name!r}: features contain NaN or inf")
    _, first = np.unique(np.concatenate([x, y[:, None].astype(np.float32)], 1), axis=0, return_index=True)
    keep = np.sort(first)
    x, y = x[keep], y[keep]
    if len(y) < 10:
        raise DatasetError(
            f"dataset {name!r}: {len(y)} distinct row(s) after removing duplicates; at least 10 are needed "
            "for a train/validation/test split"
        )
    if len(np.unique(y)) < 2:
        raise DatasetError(f"dataset {name!r}: every row has the same class; classification needs at least two")
    strat = y if np.bincount(y).min() >= 3 else None
    idx = np.arange(len(y))
    from sklearn.model_selection import train_test_split  # here: scikit-learn takes 0.7 s to import

    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=strat)
    strat_tr = y[tr] if strat is not None else None
    tr, va = train_test_split(tr, test_size=val_size, random_state=seed, stratify=strat_tr)
    mean, std = x[tr].mean(0), x[tr].std(0)
    std[std == 0] = 1.0

    def mk(i: np.ndarray) -> Split:
        return Split(torch.from_numpy((x[i] - mean) / std).float(), torch.from_numpy(y[i]))

    return Dataset(name, feats, classes, mk(tr), mk(va), mk(te), shape, {"mean": mean.tolist(), "std": std.tolist()})

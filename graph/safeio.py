"""Paths that stay inside their directory: reading saved files and writing outputs.

A saved graph directory and an output directory are untrusted trees: a symlink planted in them must
not make qfx read or overwrite a file elsewhere. :func:`inside` is the read side (a file named by a
directory's format must be a regular file within it); :func:`check_out_dir` the write side (before a
command writes into ``out``, no symlink inside ``out`` may lead outside it); :func:`out_path` checks one
output file.
"""

from __future__ import annotations

import os
from pathlib import Path


class UnsafePathError(ValueError):
    """A path leaves its directory (through ``..``, an absolute name or a symlink); the message names it."""


def _within(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
    except ValueError:
        return False
    return True


def inside(root: str | Path, name: str, what: str = "file") -> Path:
    """``root/name`` when it is a regular file whose real path lies inside ``root``'s real path."""
    r = Path(root)
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise UnsafePathError(f"{r}: {what} name {name!r} leaves the directory")
    p = r / name
    if not _within(Path(os.path.realpath(p)), Path(os.path.realpath(r))):
        raise UnsafePathError(f"{p}: is a symlink out of {r}; refusing to read it")
    if p.exists() and not p.is_file():
        raise UnsafePathError(f"{p}: not a regular file")
    return p


def check_out_dir(out: str | Path, derived: bool = False) -> Path:
    """Refuse to write into ``out`` if a symlink inside it leads out of it (returns ``out``).

    ``out`` itself may be a link the user made; what is checked is the tree under its real path. A
    ``derived`` directory is a default qfx chose inside an input directory (``GRAPH/synth``): the input
    is untrusted, so ``out`` itself being a symlink is refused too.
    """
    o = Path(out)
    if derived and o.is_symlink():
        raise UnsafePathError(
            f"{o}: is a symlink (to {os.path.realpath(o)}) inside the input directory; refusing to write "
            "through it: remove it or pass --out"
        )
    if not o.exists():
        return o
    if not o.is_dir():
        raise UnsafePathError(f"{o}: output path exists and is not a directory")
    root = Path(os.path.realpath(o))
    for dirpath, dirnames, filenames in os.walk(o):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink() and not _within(Path(os.path.realpath(p)), root):
                raise UnsafePathError(
                    f"{p}: a symlink out of the output directory {o} (to {os.path.realpath(p)}); "
                    "refusing to write there: remove it or choose another --out"
                )
    return o


def out_path(out: str | Path, name: str) -> Path:
    """``out/name`` for writing: refused when it (or a folder on the way) is a symlink leading out of ``out``."""
    o = Path(out)
    p = o / name
    root = Path(os.path.realpath(o))
    if not _within(Path(os.path.realpath(p)), root):
        raise UnsafePathError(f"{p}: leads out of the output directory {o} (a symlink?); refusing to write it")
    return p

"""Checks of user-supplied values, written once and used at each boundary: the command lines
(argparse ``type=`` functions, :func:`arg_int` / :func:`arg_float`), the training config
(:mod:`elf_fast.train_config`), checkpoint headers (:mod:`elf_fast.checkpoint`), the Python API
(:class:`elf_fast.Generator`, :class:`elf_fast.sampling.SamplerConfig`) and the fused ops'
scalar arguments (:mod:`elf_fast.op_rules`).

Every check raises ``ValueError`` naming the value; numbers must be finite; integers must fit
the 64-bit ints the compiled ops and torch take (``bool`` is never an int here).

The documented limits of the sampler's settings (:data:`LIMITS`) keep a typo from running a
sampler that cannot finish or that feeds the network values far outside anything it was
trained on; they are far beyond any setting of docs/method.md §5.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from pathlib import Path

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

#: (low, high) of each sampler setting, inclusive; shared by SamplerConfig, the command lines and
#: checkpoint headers' ``sampler`` entries.
LIMITS = {
    "steps": (1, 100_000),        # network calls per sample
    "gamma": (0.0, 1000.0),       # SDE churn: at gamma >= 1 / dt the churn factor is 0 anyway
    "w_sc": (-100.0, 100.0),      # self-conditioning CFG scale (an input token of the network)
    "cfg": (-100.0, 100.0),       # CFG scale
    "batch_size": (0, 65_536),    # samples per batch (0: automatic)
    "length": (0, 1_000_000),     # tokens per sample (0: the checkpoint's); the model's max_length bounds it too
    "num_samples": (1, 100_000_000),
    "seed": (0, INT64_MAX),
}


def _where(name: str) -> str:
    return name if name.startswith("-") or " " in name else f"{name}"


def integer(name: str, value, low: int | None = INT64_MIN, high: int | None = INT64_MAX) -> int:
    """``value`` as an int in ``[low, high]`` (None: unbounded on that side; by default a 64-bit int).
    Accepts ints and integral floats/numpy ints; rejects bools, strings, non-integral or non-finite numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{_where(name)} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{_where(name)} must be an integer, got {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{_where(name)} must be an integer in [{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}], got {value!r}")
    return v


def number(name: str, value, low: float | None = None, high: float | None = None, *,
           low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{_where(name)} must be a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v):
        raise ValueError(f"{_where(name)} must be a finite number, got {value!r}")
    too_low = low is not None and (v <= low if low_open else v < low)
    if too_low or (high is not None and v > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{_where(name)} must be in {'(' if low_open else '['}{lo}, {hi}], got {value!r}")
    return v


def setting(name: str, value, label: str | None = None):
    """A sampler setting (a key of :data:`LIMITS`) checked against its limits; ``label`` names it."""
    low, high = LIMITS[name]
    if isinstance(low, int) and isinstance(high, int):
        return integer(label or name, value, low, high)
    return number(label or name, value, low, high)


def seed(value, name: str = "seed") -> int:
    """A random seed: an int in [0, 2**63)."""
    return integer(name, value, 0, INT64_MAX)


def path_arg(name: str, value) -> str:
    """A path given by the user: a non-empty str or os.PathLike (ValueError otherwise)."""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    s = os.fspath(value)
    if not isinstance(s, str) or not s.strip():
        raise ValueError(f"{name} must be a non-empty path, got {value!r}")
    return s


def plain_name(name: str, value: str) -> str:
    """A file name without folders: non-empty, no path separator, not '.' or '..'."""
    if not value or value.strip() != value or value in (".", "..") or "/" in value or "\\" in value \
            or value.startswith(".") or "\0" in value:
        raise ValueError(f"{name} must be a plain file name (no folders, not empty, not starting with '.'), "
                         f"got {value!r}")
    return value


def writable_file(name: str, path: str | os.PathLike) -> Path:
    """Check, without creating or truncating anything, that ``path`` can be written as a file:
    not a folder, its folder exists (or can be created) and is writable, and an existing file
    is writable. OSError (IsADirectoryError, PermissionError, FileNotFoundError) otherwise."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{name} {str(p)!r} is a folder; name a file")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise PermissionError(f"{name} {str(p)!r} cannot be written: permission denied")
        return p
    return _creatable(name, p, "written")


def _creatable(name: str, p: Path, verb: str) -> Path:
    """``p`` (which does not exist) if its nearest existing ancestor is a writable folder, so
    that ``p`` and any missing folders above it can be made; OSError otherwise."""
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{name} {str(p)!r}: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{name} {str(p)!r} cannot be {verb}: {str(parent)!r} is not writable")
    return p


def writable_dir(name: str, path: str | os.PathLike) -> Path:
    """Check, creating nothing, that ``path`` is (or can be made) a writable folder; OSError otherwise."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise NotADirectoryError(f"{name} {str(p)!r} exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise PermissionError(f"{name} {str(p)!r} cannot be written: permission denied")
        return p
    return _creatable(name, p, "created")


# ------------------------------------------------------------------ argparse type= functions
def _arg(check, kind: str):
    def parse(text: str):
        try:
            value = float(text) if kind == "number" else int(text, 10)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {'a number' if kind == 'number' else 'an integer'}, "
                                             f"got {text!r}") from None
        try:
            return check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).replace("value ", "", 1)) from None

    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def arg_int(low: int | None = INT64_MIN, high: int | None = INT64_MAX):
    """An argparse ``type=`` for an integer option in ``[low, high]``."""
    return _arg(lambda v: integer("value", v, low, high), "integer")


def arg_float(low: float | None = None, high: float | None = None, *, low_open: bool = False):
    """An argparse ``type=`` for a finite number option in ``[low, high]``."""
    return _arg(lambda v: number("value", v, low, high, low_open=low_open), "number")


def arg_setting(name: str):
    """An argparse ``type=`` for the sampler setting ``name`` (its :data:`LIMITS`)."""
    low, high = LIMITS[name]
    if isinstance(low, int) and isinstance(high, int):
        return arg_int(low, high)
    return arg_float(low, high)

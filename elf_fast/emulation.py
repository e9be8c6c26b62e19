"""The CUDA kernels on the CPU: elf_fast's SIMT emulation build, a test module.

``csrc/cuda/*.cu`` compiled by the host C++ compiler against ``csrc/cuda/simt_emu.h``
become ``elf_fast._C_emu``, whose ops ``torch.ops.elf_fast_emu.*`` take CPU tensors and
run every CUDA thread as a fiber: barriers, warp shuffles, shared memory and
out-of-bounds accesses are checked (see ``docs/emulation.md``). The ops in
:mod:`elf_fast.ops` reach it with ``backend="emu"``.

It is never built by default. ``ELF_FAST_EMU=1 pip install --no-build-isolation -e .``
builds it with the package (CI does); else :func:`load` with ``build=True`` compiles it
once into ``build/emu`` (about a minute on 2 cores), which the tests do when it is missing.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import sys

import torch

_MODULE = None
_LOAD_ERROR: str | None = None
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sources(root: str = ROOT) -> list[str]:
    """The emulation module's sources (relative to ``root``): the device-generic host code, the
    emulator's runtime, and one wrapper per CUDA source file that includes it unchanged."""
    shared = [os.path.join("csrc", f) for f in ("checks.cpp", "decode_head.cpp", "selfcond_proj.cpp", "split_gemm.cpp")]
    emu = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "csrc", "emu", "*.cpp")))
    return shared + emu


def compile_args() -> list[str]:
    """C++ flags of the emulation build (setup.py and the on-demand build use these)."""
    # -O1 -g0: half the compile time of -O2 -g, and the emulator's speed is set by its fibers.
    # No FMA contraction (the .cu's __f*_rn arithmetic rounds each operation, and so does
    # the CPU kernel they are compared with); hidden symbols so that elf_fast._C's and
    # this module's copies of the shared host code never meet.
    return ["-O1", "-g0", "-DELF_FAST_SIMT_EMU", "-fvisibility=hidden", "-ffp-contract=off", "-Wno-unknown-pragmas"]


def include_dirs(root: str = ROOT) -> list[str]:
    """csrc/, csrc/cuda/ and, when a CUDA toolkit is present, its headers (for CUDA's own
    dim3/uint3, __nv_bfloat16 and __half; without them the emulator defines its own)."""
    dirs = [os.path.join(root, "csrc"), os.path.join(root, "csrc", "cuda")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "include", "vector_types.h")):
            dirs.append(os.path.join(home, "include"))
            break
    return dirs


def _register_python_side() -> None:
    from elf_fast import ops

    ops.register_python_side("elf_fast_emu")


def load(build: bool = False, verbose: bool = False):
    """Import the emulation module (``elf_fast._C_emu``), or compile it first when ``build``.

    Returns the module, or None when it is not built (and ``build`` is False) or cannot be
    built (:func:`load_error` says why). Loading registers ``torch.ops.elf_fast_emu``.
    """
    global _MODULE, _LOAD_ERROR
    if _MODULE is not None:
        return _MODULE
    try:
        _MODULE = importlib.import_module("elf_fast._C_emu")
    except ImportError as exc:
        _LOAD_ERROR = f"elf_fast._C_emu is not built ({exc})"
        if not build:
            return None
        try:
            _MODULE = _build(verbose)
        except Exception as exc:  # a compiler error, no compiler, ...
            _LOAD_ERROR = f"building the emulation module failed: {type(exc).__name__}: {exc}"
            return None
    _LOAD_ERROR = None
    _register_python_side()
    return _MODULE


def _build(verbose: bool):
    from torch.utils import cpp_extension

    build_dir = os.path.join(ROOT, "build", "emu")
    os.makedirs(build_dir, exist_ok=True)
    print(f"elf_fast: building the CUDA emulation module in {build_dir} unless it is up to date "
          "(the first time: about a minute on 2 cores)", file=sys.stderr, flush=True)
    return cpp_extension.load(
        name="elf_fast_emu",
        sources=[os.path.join(ROOT, s) for s in sources()],
        extra_cflags=compile_args(),
        extra_include_paths=include_dirs(),
        build_directory=build_dir,
        verbose=verbose,
    )


def load_error() -> str | None:
    return _LOAD_ERROR


def _require():
    mod = load()
    if mod is None:
        raise RuntimeError(f"elf_fast.emulation: {_LOAD_ERROR}")
    return mod


@contextlib.contextmanager
def guarded_memory():
    """CPU tensors allocated inside end at a PROT_NONE page: an emulated kernel reading or writing
    past the end of one fails its launch with a message naming the kernel, block and thread."""
    mod = _require()
    previous = mod.guarded_memory()
    mod.set_guarded_memory(True)
    try:
        yield
    finally:
        mod.set_guarded_memory(previous)


def selftest(name: str, x: torch.Tensor, variant: int = 0) -> torch.Tensor:
    """Runs one of the emulator's own test kernels (``csrc/emu/selftest_kernels.cpp``)."""
    return _require()._selftest(name, x, variant)

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


@contextlib.contextmanager
def tensor_core_numerics(block: int = 16, kept_bits: int = 24, round_to_nearest: bool = False):
    """Inside, emulated ``mma.sync`` sums its exact products by the bit-level model of NVIDIA's
    tensor cores: ``block`` products at a time, each block's terms (its products and the running
    accumulator) aligned to the largest one's exponent and truncated to ``kept_bits`` significant
    bits of it, added exactly, then rounded once to fp32, toward zero (to nearest with
    ``round_to_nearest``). ``block=0`` is the default numerics: k order, fp32 round-to-nearest adds.
    Host-side GEMMs (cuBLAS in the CUDA build, CPU fp32 GEMMs here) are not affected."""
    mod = _require()
    previous = mod.tensor_core_numerics()
    mod.set_tensor_core_numerics(block, kept_bits, round_to_nearest)
    try:
        yield
    finally:
        mod.set_tensor_core_numerics(*previous)


def _to_float_rz(s: torch.Tensor) -> torch.Tensor:
    """float64 -> float32 toward zero (finite values stay finite)."""
    f = s.float()
    over = f.double().abs() > s.abs()
    f = torch.where(over & torch.isfinite(f), torch.nextafter(f, torch.zeros_like(f)), f)
    big = torch.isinf(f) & torch.isfinite(s)
    return torch.where(big, torch.finfo(torch.float32).max * torch.sign(s).float(), f)


def mma_model(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, block: int = 0, kept_bits: int = 24,
              round_to_nearest: bool = False) -> torch.Tensor:
    """D = C + A B as :func:`tensor_core_numerics` makes an emulated mma compute it (float64 model of
    the same arithmetic; ``block=0``: k order, fp32 round-to-nearest). A (..., M, K), B (..., K, N),
    C (..., M, N) fp32 with A, B exactly representable in the operand type (bf16 / tf32), so every
    product is exact. Finite inputs only. scripts/tc_probe.py fits a GPU's results to it."""
    prods = (A.double()[..., :, :, None] * B.double()[..., None, :, :]).movedim(-2, 0)  # (K, ..., M, N)
    acc = C.float().clone()
    K = prods.shape[0]
    if block == 0:
        for k in range(K):
            acc = acc + prods[k].float()  # exact products: one fp32 rounding per add
        return acc
    for k0 in range(0, K, block):
        terms = torch.cat([acc.double()[None], prods[k0:k0 + block]])
        m = terms.abs().amax(0)
        _, e = torch.frexp(m)  # m = f 2^e, f in [0.5, 1): the leading bit is 2^(e - 1)
        quantum = torch.ldexp(torch.ones_like(m), (e - 1) - kept_bits + 1)
        s = (torch.trunc(terms / quantum) * quantum).sum(0)
        s = torch.where(m == 0, terms.sum(0), s)
        acc = s.float() if round_to_nearest else _to_float_rz(s)
    return acc


DEVICE_PROFILES = ("sm_80", "sm_86", "sm_89", "sm_90")


@contextlib.contextmanager
def device_profile(name: str):
    """Inside, the emulated device has ``name``'s limits (sm_80: 163 KiB of shared memory per block,
    sm_86 / sm_89: 99 KiB, sm_90, the default: 227 KiB): launchers size their kernels for it, and a
    launch over it fails as it would on such a GPU."""
    mod = _require()
    previous = mod.device_profile()[0]
    if not mod.set_device_profile(name):
        raise ValueError(f"unknown device profile {name!r}; one of {', '.join(DEVICE_PROFILES)}")
    try:
        yield
    finally:
        mod.set_device_profile(previous)


def launch_counts(reset: bool = False) -> dict[str, int]:
    """Emulated kernel launches per kernel name (without ``elf_fast::`` and anonymous namespaces)
    since the last reset (``reset=True`` clears them)."""
    out: dict[str, int] = {}
    for name, n in _require().launch_counts(reset).items():
        short = name.replace("elf_fast::", "").replace("{anonymous}::", "").replace("(anonymous namespace)::", "")
        out[short] = out.get(short, 0) + n
    return out


def selftest(name: str, x: torch.Tensor, variant: int = 0) -> torch.Tensor:
    """Runs one of the emulator's own test kernels (``csrc/emu/selftest_kernels.cpp``)."""
    return _require()._selftest(name, x, variant)

"""The transformer-block element-wise ops: fused kernel vs the PyTorch reference, torch.compile of
that reference, and for swiglu a hand-written CuPy ElementwiseKernel (CUDA only:
cupy_baselines.py; rms_norm and qk_norm_rope need row reductions, no one-line CuPy kernel).

GPU: ELF-B shapes of one block forward at batch 32 x (1024 + 12) positions, hidden 768,
12 heads of 64, SwiGLU hidden 2048 (the sampling benchmark's size), bf16.
CPU: the same widths at 4 x 76 positions.

Training (``test_block_op_train``, CPU): forward + backward (``torch.autograd.grad`` of every
differentiable input) at the built-in config's shapes, ELF-XS (hidden 128, 2 heads of 64, SwiGLU
hidden 341) at batch 64 x 76 positions: the kernel forward with its fused backward kernel vs the
reference differentiated by autograd.
"""

import pytest
import torch

from elf_fast import ops, reference
import cupy_baselines
from common import compiled_or_skip, compiled_reference, measure

GPU = dict(B=32, T=1036, H=768, heads=12, F=2048)
CPU_SIZE = dict(B=4, T=76, H=768, heads=12, F=2048)


def _case(device, dtype):
    s = GPU if device == "cuda" else CPU_SIZE
    g = torch.Generator().manual_seed(0)
    mk = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    hd = s["H"] // s["heads"]
    ang = torch.arange(s["T"], dtype=torch.float32)[:, None] * torch.rand(hd // 2, generator=g)
    return s, mk, hd, ang.cos().to(device), ang.sin().to(device)


def _fn(impl, op, device, *args):
    if impl == "kernel":
        return lambda: getattr(ops, op)(*args, backend="kernel")
    if impl == "compiled":
        return compiled_or_skip(op, lambda: compiled_reference(op)(*args))
    if impl == "cupy":
        if op != "swiglu":
            pytest.skip(f"no CuPy baseline for {op} (a row reduction, not an element-wise kernel)")
        return cupy_baselines.swiglu(cupy_baselines.cupy_or_skip(device), *args)
    return lambda: getattr(reference, op)(*args)


@pytest.mark.parametrize("impl", ["kernel", "reference", "compiled", "cupy"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op", ["rms_norm", "qk_norm_rope", "swiglu"])
def test_block_op(benchmark, device, impl, dtype, op):
    dt = getattr(torch, dtype)
    s, mk, hd, cos, sin = _case(device, dt)
    rows = s["B"] * s["T"]
    es = torch.finfo(dt).bits // 8
    if op == "rms_norm":
        args = (mk(s["B"], s["T"], s["H"]), torch.randn(s["H"]).to(device), 1e-6)
        nbytes = 2 * rows * s["H"] * es
    elif op == "qk_norm_rope":
        args = (mk(s["B"], s["T"], 3 * s["H"]), torch.randn(hd).to(device), torch.randn(hd).to(device), cos, sin,
                s["heads"], 1e-6)
        nbytes = 2 * rows * 3 * s["H"] * es
    else:
        args = (mk(s["B"], s["T"], 2 * s["F"]),)
        nbytes = rows * 3 * s["F"] * es
    benchmark.group = f"{op} {device} {dtype} B={s['B']} T={s['T']}"
    with torch.no_grad():
        fn = _fn(impl, op, device, *args)
        measure(benchmark, fn, device, rounds=20 if device == "cuda" else 200, nbytes=nbytes, impl=impl)


TRAIN_CPU = dict(B=64, T=76, H=128, heads=2, F=341)


def _train_case(op, dtype):
    s = TRAIN_CPU
    g = torch.Generator().manual_seed(0)
    mk = lambda *shape: torch.randn(*shape, generator=g).to(dtype).requires_grad_()  # noqa: E731
    hd = s["H"] // s["heads"]
    ang = torch.arange(s["T"], dtype=torch.float32)[:, None] * torch.rand(hd // 2, generator=g)
    if op == "rms_norm":
        inputs = (mk(s["B"], s["T"], s["H"]), torch.randn(s["H"], generator=g).requires_grad_())
        return inputs, inputs + (1e-6,)
    if op == "qk_norm_rope":
        inputs = (mk(s["B"], s["T"], 3 * s["H"]), torch.randn(hd, generator=g).requires_grad_(),
                  torch.randn(hd, generator=g).requires_grad_())
        return inputs, inputs + (ang.cos(), ang.sin(), s["heads"], 1e-6)
    inputs = (mk(s["B"], s["T"], 2 * s["F"]),)
    return inputs, inputs


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op", ["rms_norm", "qk_norm_rope", "swiglu"])
def test_block_op_train(benchmark, device, impl, dtype, op):
    if device != "cpu":
        pytest.skip("the backward kernels are CPU only (CUDA training runs the reference)")
    inputs, args = _train_case(op, getattr(torch, dtype))
    f = getattr(ops, op)
    backend = "kernel" if impl == "kernel" else "reference"
    with torch.no_grad():
        outs = f(*args, backend=backend)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = tuple(torch.randn_like(o) for o in outs)

    def fwd_bwd():
        out = f(*args, backend=backend)
        return torch.autograd.grad(out if isinstance(out, tuple) else (out,), inputs, grads)

    s = TRAIN_CPU
    benchmark.group = f"{op} train fwd+bwd cpu {dtype} B={s['B']} T={s['T']} H={s['H']}"
    measure(benchmark, fwd_bwd, device, rounds=100, impl=impl)

"""selfcond_proj: fused (pre-multiplied, no concatenation) vs the port's cat + 3 Linear, and
torch.compile of that reference. No CuPy row: a CuPy user would call cupy.matmul, the same
cuBLAS GEMMs as the reference row."""

import pytest
import torch

from elf_fast import ops, reference
from common import CPU, ELF_B, compiled_or_skip, compiled_reference, measure, selfcond_case


@pytest.mark.parametrize("impl", ["kernel", "reference", "compiled"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_selfcond_proj(benchmark, device, impl, dtype):
    s = ELF_B if device == "cuda" else CPU
    N, C, H, R = s["N"], s["C"], s["H"], s["R"]
    args = selfcond_case(N, C, H, R, getattr(torch, dtype), device)
    benchmark.group = f"selfcond_proj {device} {dtype} N={N} C={C} H={H}"
    # FLOPs of the computation as the port defines it (cat + 3 Linear), so both rows compare work done per second
    flops = 2.0 * N * (2 * C * C + C * R + R * H)
    nbytes = args[0].element_size() * N * (2 * C + H)  # read z, x_prev; write h0
    with torch.no_grad():
        if impl == "kernel":
            fn = lambda: ops.selfcond_proj(*args, backend="kernel")  # noqa: E731
        elif impl == "reference":
            fn = lambda: reference.selfcond_proj(*args)  # noqa: E731
        else:
            fn = compiled_or_skip("selfcond_proj", lambda: compiled_reference("selfcond_proj")(*args))
        measure(benchmark, fn, device, rounds=20 if device == "cuda" else 15, flops=flops, nbytes=nbytes, impl=impl)

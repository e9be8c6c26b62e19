"""flow_step: one fused pass vs the reference (Philox in PyTorch) and the port's chain (torch.randn)."""

import pytest
import torch

from elf_fast import ops, reference
from common import CPU, ELF_B, FLOW_KW, flow_case, measure, port_flow_chain


@pytest.mark.parametrize("impl", ["kernel", "reference", "port"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_flow_step_sde(benchmark, device, impl, dtype):
    s = ELF_B if device == "cuda" else CPU
    N, C = s["N"], s["C"]
    z, x_c, _ = flow_case(N, C, getattr(torch, dtype), device)
    benchmark.group = f"flow_step SDE {device} {dtype} {N}x{C}"
    if impl == "kernel":
        fn = lambda: ops.flow_step(z, x_c, backend="kernel", **FLOW_KW)  # noqa: E731
    elif impl == "reference":
        fn = lambda: reference.flow_step(z, x_c, **FLOW_KW)  # noqa: E731
    else:
        fn = lambda: port_flow_chain(z, x_c, **FLOW_KW)  # noqa: E731
    nbytes = z.element_size() * N * C * 4  # read z, x_c; write z_next, x_hat
    measure(benchmark, fn, device, rounds=50 if device == "cuda" else 15, nbytes=nbytes, impl=impl)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_flow_step_cfg_ode(benchmark, device, impl):
    s = ELF_B if device == "cuda" else CPU
    N, C = s["N"], s["C"]
    z, x_c, x_u = flow_case(N, C, torch.bfloat16, device)
    mask = torch.zeros(N, dtype=torch.bool, device=device)
    mask[: N // 2] = True
    kw = dict(t=0.4, t_next=0.45, cfg=2.0)
    benchmark.group = f"flow_step CFG+cond ODE {device} bfloat16 {N}x{C}"
    if impl == "kernel":
        fn = lambda: ops.flow_step(z, x_c, x_u, mask, z, backend="kernel", **kw)  # noqa: E731
    else:
        fn = lambda: reference.flow_step(z, x_c, x_u, mask, z, **kw)  # noqa: E731
    nbytes = 2 * N * C * 5.5  # read z, x_c, x_u, half of x_cond; write two outputs
    measure(benchmark, fn, device, rounds=50 if device == "cuda" else 15, nbytes=nbytes, impl=impl)

"""The CPU kernel's vectorised noise (csrc/cpu_vecmath.h) against the reference's philox_normal.

Same Philox bits, same Box-Muller formulas; only log/sin/cos differ from PyTorch's in the last
ulp, so every normal must agree to a few float32 ulp over a large sample.
"""

import pytest
import torch

from elf_fast import ops, reference
from conftest import requires_kernels

pytestmark = requires_kernels


def _kernel_noise(n, seed, offset):
    zero = torch.zeros(n, 1)
    # alpha = 0, sigma_n = 1: z_next = 0 * z' + 1 * eps, exactly eps
    eps, _ = ops.flow_step(zero, zero, t=0.0, t_next=0.0, alpha=0.0, sigma_n=1.0, seed=seed, offset=offset,
                           backend="kernel")
    return eps.view(-1)


@pytest.mark.parametrize("seed,offset", [(42, 0), (-(2**63) + 5, 2**40 + 3), (7, 2**32 - 1)])
def test_noise_matches_reference_to_a_few_ulp(seed, offset):
    n = (1 << 20) + 3  # a partial Philox group and a partial block at the end
    k = _kernel_noise(n, seed, offset)
    r = reference.philox_normal(n, seed, offset)
    err = (k - r).abs() / r.abs().clamp_min(1.0)
    assert err.max().item() <= 1e-6  # ~8 ulp of a value near 1
    assert (k == r).float().mean().item() > 0.5  # most are bit-identical

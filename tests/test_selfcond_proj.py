import pytest
import torch

from elf_fast import ops, reference
from conftest import (assert_fp32_close, assert_low_precision_close, requires_kernels, selfcond_params)

SHAPES = [(1, 8, 16), (47, 384, 96), (1031, 512, 768), (47, 512, 32)]  # (N, C, H)


@pytest.mark.parametrize("N,C,H", SHAPES)
@pytest.mark.parametrize("with_x", [True, False])
def test_matches_reference_fp32(kdev, N, C, H, with_x):
    torch.manual_seed(N + C)
    z = kdev.to(torch.randn(N, C))
    x = kdev.to(torch.randn(N, C)) if with_x else None
    w = kdev.to(*selfcond_params(C, H))
    out = ops.selfcond_proj(z, x, *w, backend=kdev.backend)
    assert out.shape == (N, H) and out.dtype == torch.float32
    assert_fp32_close(out, reference.selfcond_proj(z, x, *w), rel=1e-4 if kdev.name == "cuda" else 2e-5)  # TF32


@pytest.mark.parametrize("N,C,H", SHAPES)
def test_bf16_error_within_twice_torch_bf16(kdev, N, C, H):
    torch.manual_seed(1)
    z, x = torch.randn(N, C), torch.randn(N, C)
    w = selfcond_params(C, H)
    ref32 = reference.selfcond_proj(z, x, *w)
    bf = [t.to(device=kdev.device, dtype=torch.bfloat16) for t in (z, x, *w)]
    out = ops.selfcond_proj(*bf, backend=kdev.backend).cpu()
    assert out.dtype == torch.bfloat16
    assert_low_precision_close(out, ref32, reference.selfcond_proj(*bf).cpu())


def test_empty_input(kdev):
    z = kdev.to(torch.randn(0, 8))
    out = ops.selfcond_proj(z, z, *kdev.to(*selfcond_params(8, 16)), backend=kdev.backend)
    assert out.shape == (0, 16)


def test_leading_dims_kept(kdev):
    z, x = kdev.to(torch.randn(3, 5, 8), torch.randn(3, 5, 8))
    w = kdev.to(*selfcond_params(8, 24))
    out = ops.selfcond_proj(z, x, *w, backend=kdev.backend)
    assert out.shape == (3, 5, 24)
    assert_fp32_close(out, reference.selfcond_proj(z, x, *w))


@pytest.mark.parametrize("with_x", [True, False])
def test_gradients_match_reference_autograd(kdev, with_x):
    torch.manual_seed(2)
    N, C, H = 47, 24, 40
    base = kdev.to(torch.randn(N, C), torch.randn(N, C) if with_x else None, *selfcond_params(C, H, R=16))
    grad_out = kdev.to(torch.randn(N, H))

    def grads(fn):
        leaves = [None if t is None else t.clone().requires_grad_() for t in base]
        fn(*leaves).backward(grad_out)
        return [None if t is None else t.grad for t in leaves]

    got = grads(lambda *a: ops.selfcond_proj(*a, backend=kdev.backend))
    want = grads(reference.selfcond_proj)
    for g, r in zip(got, want):
        if r is None:
            assert g is None
        else:
            assert_fp32_close(g, r, rel=1e-3 if kdev.name == "cuda" else 5e-5)


@requires_kernels
@pytest.mark.filterwarnings("ignore:Input #")
def test_gradcheck():
    torch.manual_seed(3)
    N, C, H, R = 5, 4, 6, 3
    inputs = [torch.randn(N, C), torch.randn(N, C), *selfcond_params(C, H, R=R)]
    inputs = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(
        lambda *a: torch.ops.elf_fast.selfcond_proj(*a), inputs, eps=1e-2, atol=5e-3, rtol=5e-3
    )


@pytest.mark.parametrize("with_x", [True, False])
def test_opcheck(kdev, with_x):
    N, C, H = 7, 8, 12
    args = kdev.to(torch.randn(N, C), torch.randn(N, C) if with_x else None, *selfcond_params(C, H, R=4))
    args = [None if t is None else t.requires_grad_() for t in args]
    torch.library.opcheck(kdev.op("selfcond_proj"), tuple(args))
    grad = kdev.to(torch.randn(N, H))
    torch.library.opcheck(
        kdev.op("selfcond_proj_backward"),
        (grad, *[None if t is None else t.detach() for t in args[:6]]),
    )


@requires_kernels
def test_bad_inputs_name_the_argument():
    z = torch.randn(4, 8)
    w = selfcond_params(8, 16)
    with pytest.raises(ValueError, match="w_sc"):
        ops.selfcond_proj(z, None, w[0][:, :8], *w[1:])
    with pytest.raises(ValueError, match="x_prev"):
        ops.selfcond_proj(z, torch.randn(4, 8, dtype=torch.bfloat16), *w)
    with pytest.raises(ValueError, match="b_p2"):
        ops.selfcond_proj(z, None, *w[:4], torch.randn(3))
    with pytest.raises(ValueError, match="z"):
        ops.selfcond_proj(z.long(), None, *w)
    with pytest.raises(RuntimeError, match="w_p1.*contiguous"):
        torch.ops.elf_fast.selfcond_proj(z, None, w[0], w[1], w[2].t().contiguous().t(), w[3], w[4])
    with pytest.raises(RuntimeError, match="'b_sc' must have shape"):
        torch.ops.elf_fast.selfcond_proj(z, None, w[0], torch.randn(5), *w[2:])


@requires_kernels
def test_fake_implementation_runs_the_wrappers_rules():
    """Tracing (meta or fake tensors, torch.compile) reports a bad shape with the wrapper's ValueError,
    not a RuntimeError when the kernel runs."""
    z = torch.randn(4, 8, device="meta")
    w = [t.to("meta") for t in selfcond_params(8, 16, R=4)]
    assert torch.ops.elf_fast.selfcond_proj(z, z, *w).shape == (4, 16)
    with pytest.raises(ValueError, match=r"'w_p2' must be \(H, 4\), got \(16, 5\)"):
        torch.ops.elf_fast.selfcond_proj(z, z, *w[:3], torch.randn(16, 5, device="meta"), w[4])
    with pytest.raises(ValueError, match="'x_prev' has dtype torch.bfloat16"):
        torch.ops.elf_fast.selfcond_proj(z, z.bfloat16(), *w)


def test_reference_backend_checks_the_rules_too():
    z = torch.randn(4, 8)
    w = selfcond_params(8, 16, R=4)
    with pytest.raises(ValueError, match=r"'b_p2' must have shape \(16,\), got \(3,\)"):
        ops.selfcond_proj(z, None, *w[:4], torch.randn(3), backend="reference")
    with pytest.raises(ValueError, match=r"'w_sc' must have shape \(8, 16\)"):
        ops.selfcond_proj(z, None, w[0][:, :8], *w[1:], backend="reference")


@requires_kernels
def test_non_contiguous_inputs_are_handled_by_the_wrapper():
    z = torch.randn(8, 6).t()  # (6, 8), non-contiguous
    w = selfcond_params(8, 16)
    assert_fp32_close(ops.selfcond_proj(z, None, *w, backend="kernel"), reference.selfcond_proj(z, None, *w))


@requires_kernels
def test_ambient_autocast_does_not_reach_inside_the_kernel():
    """torch.autocast("cpu", bf16) around the op leaves an fp32 call fp32, forward and backward."""
    torch.manual_seed(5)
    N, C, H = 33, 24, 40
    base = [torch.randn(N, C), torch.randn(N, C), *selfcond_params(C, H, R=16)]

    def run():
        leaves = [t.clone().requires_grad_() for t in base]
        out = ops.selfcond_proj(*leaves, backend="kernel")
        out.backward(torch.ones_like(out))
        return out.detach(), [t.grad for t in leaves]

    out0, g0 = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, g = run()
    assert out.dtype == torch.float32 and torch.equal(out, out0)
    for a, b in zip(g, g0):
        assert torch.equal(a, b)

import pytest
import torch

from elf_fast import ops, reference
from conftest import (assert_fp32_close, assert_low_precision_close, decode_head_params, peak_rss_growth,
                      requires_kernels)


def _case(N, H, C, V, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[::7] = -100  # ignored rows
    mask = torch.rand(N, generator=g) < 0.8
    params = [t.to(device=device, dtype=dtype) for t in (h, *decode_head_params(H, C, V, seed=seed))]
    return params, targets.to(device), mask.to(device)


def _loss_and_grads(fn, params, targets, mask, **kw):
    leaves = [t.clone().requires_grad_() for t in params]
    loss = fn(*leaves, targets, mask, **kw)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("N,H,C,V", [(1, 16, 8, 5), (47, 64, 384, 30522), (1031, 32, 8, 32128), (47, 48, 512, 5),
                                     (37, 24, 40, 2053)])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_and_grads_match_reference_fp32(kdev, N, H, C, V, reduction):
    kdev.skip_if_too_large_to_emulate(N * V)
    params, targets, mask = _case(N, H, C, V, device=kdev.device)
    loss, grads = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, reduction=reduction,
                                  backend=kdev.backend)
    loss_r, grads_r = _loss_and_grads(reference.linear_cross_entropy, params, targets, mask, reduction=reduction)
    assert loss.dtype == torch.float32 and loss.shape == ()
    rel = 1e-3 if kdev.name == "cuda" else 5e-5  # cuBLAS may use TF32
    assert_fp32_close(loss, loss_r, rel=rel if kdev.name == "cuda" else 2e-5)
    for g, r in zip(grads, grads_r):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert_fp32_close(g, r, rel=rel)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunking_does_not_change_the_result(kdev, chunk):
    params, targets, mask = _case(101, 16, 8, 333, device=kdev.device)
    loss0, g0 = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, backend=kdev.backend)
    loss, g = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, chunk=chunk, backend=kdev.backend)
    assert_fp32_close(loss, loss0, rel=1e-6)
    for a, b in zip(g, g0):
        assert_fp32_close(a, b, rel=1e-5)


def test_float_weights_and_no_mask(kdev):
    params, targets, _ = _case(64, 16, 8, 97, device=kdev.device)
    weight = kdev.to(torch.rand(64))
    for mask in (weight, None):
        loss, grads = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, backend=kdev.backend)
        loss_r, grads_r = _loss_and_grads(reference.linear_cross_entropy, params, targets, mask)
        assert_fp32_close(loss, loss_r)
        for g, r in zip(grads, grads_r):
            assert_fp32_close(g, r, rel=5e-5)


def test_bf16_within_twice_torch_bf16_error(kdev):
    params, targets, mask = _case(257, 64, 128, 4099, device=kdev.device)
    loss32, grads32 = _loss_and_grads(reference.linear_cross_entropy, params, targets, mask)
    lp = [t.bfloat16() for t in params]
    loss, grads = _loss_and_grads(ops.linear_cross_entropy, lp, targets, mask, backend=kdev.backend)
    # PyTorch's own bf16 computation of the same head: logits in bf16, CE in fp32 as F.cross_entropy upcasts
    def torch_bf16(h, P, p, U, u, tg, m):
        logits = torch.nn.functional.gelu(h @ P + p, approximate="tanh") @ U + u
        ce = torch.nn.functional.cross_entropy(logits.float(), tg.clamp_min(0), reduction="none")
        return (ce * ((tg >= 0) & m).float()).sum()
    loss_t, grads_t = _loss_and_grads(torch_bf16, lp, targets, mask)
    assert_low_precision_close(loss, loss32, loss_t)
    for g, g32, gt in zip(grads, grads32, grads_t):
        assert g.dtype == torch.bfloat16
        assert_low_precision_close(g, g32, gt)


def test_no_grad_path_returns_loss_only(kdev):
    params, targets, mask = _case(31, 16, 8, 50, device=kdev.device)
    with torch.no_grad():
        loss = ops.linear_cross_entropy(*params, targets, mask, backend=kdev.backend)
    assert_fp32_close(loss, reference.linear_cross_entropy(*params, targets, mask))
    out = kdev.op("linear_cross_entropy")(*params, targets, mask.float(), False, 0)
    assert all(t.numel() == 0 for t in out[1:])


def test_all_rows_ignored_and_empty(kdev):
    params, targets, mask = _case(9, 16, 8, 50, device=kdev.device)
    loss, grads = _loss_and_grads(ops.linear_cross_entropy, params, torch.full_like(targets, -100), mask,
                                  backend=kdev.backend)
    assert loss.item() == 0.0 and all(g.abs().max().item() == 0.0 for g in grads)
    empty = [params[0][:0]] + params[1:]
    loss, grads = _loss_and_grads(ops.linear_cross_entropy, empty, targets[:0], mask[:0], backend=kdev.backend)
    assert loss.item() == 0.0 and grads[0].shape == (0, 16)


@requires_kernels
@pytest.mark.filterwarnings("ignore:Input #")
def test_gradcheck():
    params, targets, mask = _case(6, 5, 4, 7, seed=3)
    leaves = [t.requires_grad_() for t in params]
    assert torch.autograd.gradcheck(
        lambda *a: ops.linear_cross_entropy(*a, targets, mask, backend="kernel"), leaves,
        eps=1e-2, atol=2e-3, rtol=2e-3,
    )


def test_opcheck(kdev):
    params, targets, mask = _case(9, 16, 8, 50, device=kdev.device)
    leaves = [t.requires_grad_() for t in params]
    op = kdev.op("linear_cross_entropy")
    torch.library.opcheck(op, (*leaves, targets, mask.float(), True, 4))
    torch.library.opcheck(op, (*[t.detach() for t in params], targets, None, False, 0))


@requires_kernels
def test_bad_inputs():
    params, targets, mask = _case(8, 16, 8, 50)
    with pytest.raises(ValueError, match="targets"):
        ops.linear_cross_entropy(*params, targets.float(), mask)
    with pytest.raises(ValueError, match="targets"):
        ops.linear_cross_entropy(*params, targets[:3], mask)
    with pytest.raises(ValueError, match="mask"):
        ops.linear_cross_entropy(*params, targets, mask[:2])
    with pytest.raises(ValueError, match="reduction"):
        ops.linear_cross_entropy(*params, targets, mask, reduction="max")
    with pytest.raises(RuntimeError, match="vocabulary size 50"):
        ops.linear_cross_entropy(*params, torch.full_like(targets, 50), mask, backend="kernel")
    with pytest.raises(RuntimeError, match="'weight' must be float32"):
        torch.ops.elf_fast.linear_cross_entropy(*params, targets, mask, False, 0)


@requires_kernels
def test_fake_implementation_runs_the_wrappers_rules():
    """The raw op takes targets and weights flattened, one per row of h (the wrapper reshapes them):
    its fake implementation checks their count with the wrapper's rule function, naming the argument."""
    h = torch.randn(2, 3, 16, device="meta")
    head = [t.to("meta") for t in decode_head_params(16, 8, 50)]
    targets = torch.zeros(6, dtype=torch.int64, device="meta")
    weight = torch.ones(6, device="meta")
    outs = torch.ops.elf_fast.linear_cross_entropy(h, *head, targets, weight, True, 0)
    assert outs[0].shape == () and outs[1].shape == h.shape
    with pytest.raises(ValueError, match=r"'targets' must have 6 elements \(one per row of 'h'\), got shape \(5,\)"):
        torch.ops.elf_fast.linear_cross_entropy(h, *head, targets[:5], weight, True, 0)
    with pytest.raises(ValueError, match="'weight' must have 6 elements"):
        torch.ops.elf_fast.linear_cross_entropy(h, *head, targets, weight[:4], True, 0)
    with pytest.raises(ValueError, match="'targets' must be an int64 or int32 tensor, got torch.float32"):
        torch.ops.elf_fast.linear_cross_entropy(h, *head, weight, None, False, 0)
    with pytest.raises(ValueError, match="'chunk' must be >= 0"):
        torch.ops.elf_fast.linear_cross_entropy(h, *head, targets, None, False, -1)


def test_reference_backend_checks_the_rules_too():
    params, targets, mask = _case(8, 16, 8, 50)
    with pytest.raises(ValueError, match=r"'targets' must have shape \(8,\), got \(3,\)"):
        ops.linear_cross_entropy(*params, targets[:3], mask, backend="reference")
    with pytest.raises(ValueError, match=r"'mask' must have shape \(8,\), got \(2,\)"):
        ops.linear_cross_entropy(*params, targets, mask[:2], backend="reference")
    with pytest.raises(ValueError, match="'reduction' must be 'sum' or 'mean', got 'max'"):
        ops.linear_cross_entropy(*params, targets, mask, reduction="max", backend="reference")


@requires_kernels
def test_peak_memory_is_o_chunk_not_o_n_v():
    """(8192 x 32128) fp32 logits are 1.05 GB; forward+backward must stay far below that."""
    setup = ("N, H, C, V = 8192, 32, 64, 32128\n"
             "h = torch.randn(N, H); P = torch.randn(H, C) / 6; p = torch.zeros(C); "
             "U = torch.randn(C, V) / 8; u = torch.zeros(V); tg = torch.randint(0, V, (N,))\n"
             "params = [t.requires_grad_() for t in (h, P, p, U, u)]")
    kernel = peak_rss_growth(
        setup, "ops.linear_cross_entropy(params[0][:8], *params[1:], tg[:8], backend='kernel').backward()",
        "ops.linear_cross_entropy(*params, tg, backend='kernel').backward()")
    assert kernel < 96 * 2**20, f"kernel peak grew by {kernel / 2**20:.0f} MiB"
    ref = peak_rss_growth(setup, "reference.linear_cross_entropy(params[0][:8], *params[1:], tg[:8]).backward()",
                          "reference.linear_cross_entropy(*params, tg).backward()")
    assert ref > 8192 * 32128 * 4


@requires_kernels
def test_ambient_autocast_does_not_reach_inside_the_kernel():
    """Under torch.autocast("cpu", bf16) an fp32 call stays an fp32 computation: the kernel's
    inner GEMMs are shielded (before, they were re-cast and failed on CPU)."""
    params, targets, mask = _case(47, 32, 24, 301)
    loss0, g0 = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, backend="kernel")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, g = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, backend="kernel")
        ids, best = ops.unembed_argmax(*params, backend="kernel")
    assert loss.dtype == torch.float32
    assert_fp32_close(loss, loss0, rel=1e-6)
    for a, b in zip(g, g0):
        assert a.dtype == b.dtype and torch.equal(a, b)
    ids0, best0 = ops.unembed_argmax(*params, backend="kernel")
    assert torch.equal(ids, ids0) and torch.equal(best, best0)

import pytest
import torch

from elf_fast import ops, reference
from conftest import (assert_fp32_close, assert_low_precision_close, decode_head_params, peak_rss_growth,
                      requires_cuda, requires_kernels)


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


# (N, H, C, V) per device: on the CPU (2^22 fp32 elements a block: 130 rows at V 32128) and on a GPU
# (2^26: 2088 rows) the automatic chunk is shorter than N, so several automatic chunks run, the last
# one partial; the emulator (whose automatic chunk is the CPU's) gets a case it runs quickly.
_CHUNK_CASES = {"cpu": (300, 16, 8, 32128), "cuda_emu": (101, 16, 8, 333), "cuda": (4500, 16, 8, 32128)}


@pytest.mark.parametrize("chunk", [1, 7, "N"])
def test_chunking_does_not_change_the_result(kdev, chunk):
    N, H, C, V = _CHUNK_CASES[kdev.name]
    chunk = N if chunk == "N" else chunk
    params, targets, mask = _case(N, H, C, V, device=kdev.device)
    loss0, g0 = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, backend=kdev.backend)
    loss, g = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, chunk=chunk, backend=kdev.backend)
    # Only the order of the per-chunk sums changes (and, on a GPU, cuBLAS's kernel for other row counts).
    rel = 1e-4 if kdev.name == "cuda" else 1e-5
    assert_fp32_close(loss, loss0, rel=rel / 10)
    for a, b in zip(g, g0):
        assert_fp32_close(a, b, rel=rel)


@pytest.mark.parametrize("row", ["weighted", "zero_weight", "zero_weight_in_a_later_chunk"])
@pytest.mark.parametrize("grad", [True, False])
def test_target_id_out_of_vocabulary_is_an_error(kdev, row, grad):
    """Ids >= V are an error on every row, zero-weight ones included (as in the reference). The
    kernels check them as they read them (no host sync): the CPU one names the id and V, the
    emulated CUDA kernel the failed device-side assertion."""
    if kdev.name == "cuda":
        pytest.skip("on a GPU a bad id trips a device-side assert, which poisons the CUDA context")
    params, targets, mask = _case(40, 16, 8, 50, device=kdev.device)
    bad = 33  # not one of _case's ignored rows (every 7th)
    targets[bad] = 57
    mask[bad] = row == "weighted"
    weights = mask.float()
    chunk = 8 if row == "zero_weight_in_a_later_chunk" else 0  # the bad row is in the 5th chunk of 8
    match = (r"device-side assertion `target < V" if kdev.cuda_code
             else r"'targets' holds id 57, >= the vocabulary size 50")
    leaves = [t.clone().requires_grad_(grad) for t in params]
    for m in (mask, weights):
        with pytest.raises(RuntimeError, match=match):
            ops.linear_cross_entropy(*leaves, targets, m, chunk=chunk, backend=kdev.backend)
    with pytest.raises(RuntimeError, match=match):  # the raw op
        kdev.op("linear_cross_entropy")(*leaves, targets, weights, grad, chunk)
    with pytest.raises((IndexError, RuntimeError), match="out of bounds"):  # the reference's rule
        reference.linear_cross_entropy(*params, targets, weights)
    targets[bad] = 49  # the largest valid id
    loss = ops.linear_cross_entropy(*leaves, targets, weights, chunk=chunk, backend=kdev.backend)
    assert_fp32_close(loss.detach(), reference.linear_cross_entropy(*params, targets, weights))


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


def _native_bf16():
    from elf_fast.muon import cpu_has_native_bf16

    return cpu_has_native_bf16() is True


requires_native_bf16 = pytest.mark.skipif(not _native_bf16(), reason="needs a CPU with native bf16 (AVX512-BF16 / AMX)")


@requires_kernels
@requires_native_bf16
@pytest.mark.parametrize("N,H,C,V,chunk", [(700, 64, 384, 30522, 0), (1300, 24, 40, 30522, 0), (37, 24, 40, 2053, 0),
                                           (37, 24, 40, 2053, 5)])
def test_cpu_bf16_gemm_path_is_within_bf16_error_of_fp32(N, H, C, V, chunk, monkeypatch):
    """bf16 inputs on a CPU with native bf16: the vocabulary GEMMs run in bf16 (logits and dlogits
    rounded to bf16). The loss and every gradient must be within 2x (flash-attention's rule) of
    the error PyTorch's own bf16 autocast makes on the same bf16 inputs, against the fp32 reference
    on those inputs; with ELF_FAST_LCE_CPU_BF16=0 the same inputs take the exact fp32 path."""
    # 700 rows at V 30522: automatic chunks of 137 rows, dU per group of 4 chunks: 548 + 152 rows,
    # the last chunk's GEMMs padded from 15 to 137 rows (the first group's dU written in fp32, the
    # last one's added and rounded to bf16 in one pass); 1300 rows: 548 + 548 + 204 (a middle group
    # added in fp32; the last chunk padded from 67 rows); 37 rows: one group (its bf16 dU is the
    # result); 37 rows in chunks of 5: the last chunk padded from 2 rows.
    params, targets, mask = _case(N, H, C, V)
    lp = [t.to(torch.bfloat16) for t in params]
    up = [t.float() for t in lp]  # the bf16 values, exactly, in fp32
    loss, grads = _loss_and_grads(ops.linear_cross_entropy, lp, targets, mask, chunk=chunk, backend="kernel")
    loss_r, grads_r = _loss_and_grads(reference.linear_cross_entropy, up, targets, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_t, grads_t = _loss_and_grads(reference.linear_cross_entropy, lp, targets, mask)
    assert loss.dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in grads)
    # The loss, one sum of N rows' random rounding errors: a relative bound (the measured error is
    # ~5e-5 here, the same order as autocast's), not the 2x rule, too tight for one scalar.
    assert abs(loss - loss_r).item() <= 1e-3 * abs(loss_r).item()
    for g, r, t in zip(grads, grads_r, grads_t):
        assert_low_precision_close(g, r, t)
        assert ((g.float() - r).norm() / r.norm()).item() < 2e-2
    # The switch: the same bf16 inputs, upcast, through fp32 GEMMs (the path of CPUs without native bf16).
    monkeypatch.setenv("ELF_FAST_LCE_CPU_BF16", "0")
    loss32, grads32 = _loss_and_grads(ops.linear_cross_entropy, lp, targets, mask, chunk=chunk, backend="kernel")
    assert_fp32_close(loss32, loss_r, rel=2e-5)
    for g, r in zip(grads32, grads_r):
        assert_fp32_close(g.float(), r, rel=1e-2)  # the kernel's fp32 gradients, rounded once to bf16
    assert not torch.equal(loss32, loss)  # the default took the bf16 GEMMs


@requires_kernels
def test_fp32_inputs_never_take_the_bf16_gemms():
    """fp32 inputs stay on the fp32 GEMMs whatever the CPU, under ambient bf16 autocast too
    (test_ambient_autocast_does_not_reach_inside_the_kernel): bit-identical with the switch off."""
    params, targets, mask = _case(47, 32, 24, 301)
    loss0, g0 = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, backend="kernel")
    import os
    os.environ["ELF_FAST_LCE_CPU_BF16"] = "0"
    try:
        loss1, g1 = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, backend="kernel")
    finally:
        del os.environ["ELF_FAST_LCE_CPU_BF16"]
    assert torch.equal(loss0, loss1) and all(torch.equal(a, b) for a, b in zip(g0, g1))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_forward_and_backward_never_sync_with_the_host(dtype):
    """No .item() on target ids or anything else: the kernel path runs under sync debug mode "error"
    (which raises on any device->host synchronisation), with both reductions and several chunks."""
    params, targets, mask = _case(300, 64, 128, 4099, dtype=dtype, device="cuda")
    runs = [("sum", 0), ("mean", 0), ("mean", 64)]
    leaves = [[t.clone().requires_grad_() for t in params] for _ in range(len(runs) + 1)]
    # Warm-up outside the checked region: cuBLAS handles and workspaces, the allocator's first blocks.
    ops.linear_cross_entropy(*leaves[0], targets, mask, backend="kernel").backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for lv, (reduction, chunk) in zip(leaves[1:], runs):
            ops.linear_cross_entropy(*lv, targets, mask, reduction=reduction, chunk=chunk,
                                     backend="kernel").backward()
        with torch.no_grad():
            loss = ops.linear_cross_entropy(*params, targets, mask, reduction="mean", backend="kernel")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(loss).item() and all(lv[0].grad is not None for lv in leaves[1:])


@requires_cuda
@pytest.mark.parametrize("chunk", [0, 64])
def test_cuda_graph_capture_and_replay_match_eager(chunk):
    """Forward + backward captured once in a CUDA graph, replayed on new inputs copied into the static
    tensors, give the eager loss and gradients of those inputs."""
    N, H, C, V = 300, 64, 128, 4099
    params, targets, mask = _case(N, H, C, V, device="cuda")
    static = [t.clone().requires_grad_() for t in params]
    static_targets, static_mask = targets.clone(), mask.clone()

    def step():
        loss = ops.linear_cross_entropy(*static, static_targets, static_mask, reduction="mean", chunk=chunk,
                                        backend="kernel")
        loss.backward()
        return loss

    side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graphs' documentation does
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
            for t in static:
                t.grad = None
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    static_grads = [t.grad for t in static]  # allocated in the graph's pool, rewritten by each replay

    new_params, new_targets, new_mask = _case(N, H, C, V, seed=1, device="cuda")
    with torch.no_grad():
        for s, n in zip(static, new_params):
            s.copy_(n)
    static_targets.copy_(new_targets)
    static_mask.copy_(new_mask)
    graph.replay()
    torch.cuda.synchronize()

    loss_e, grads_e = _loss_and_grads(ops.linear_cross_entropy, new_params, new_targets, new_mask,
                                      reduction="mean", chunk=chunk, backend="kernel")
    loss_0, _ = _loss_and_grads(ops.linear_cross_entropy, params, targets, mask, reduction="mean",
                                chunk=chunk, backend="kernel")
    assert not torch.equal(loss_e, loss_0)  # the new inputs give another loss: the replay used them
    assert_fp32_close(static_loss, loss_e, rel=1e-5)
    for g, e in zip(static_grads, grads_e):
        assert g is not None and g.shape == e.shape
        assert_fp32_close(g, e, rel=1e-5)

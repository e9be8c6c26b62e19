"""The CUDA kernels against the references and the CPU kernels. Skipped without a GPU."""

import pytest
import torch

from elf_fast import ops, reference
from conftest import (assert_fp32_close, assert_low_precision_close, decode_head_params, max_err, requires_cuda,
                      selfcond_params)

pytestmark = requires_cuda
DEV = "cuda"


@pytest.mark.parametrize("N,C,H", [(1, 8, 16), (1031, 512, 768)])
@pytest.mark.parametrize("with_x", [True, False])
def test_selfcond_proj(N, C, H, with_x):
    z, x = torch.randn(N, C), torch.randn(N, C)
    w = selfcond_params(C, H)
    x = x if with_x else None
    ref32 = reference.selfcond_proj(z, x, *w)
    cuda = [None if t is None else t.to(DEV) for t in (z, x, *w)]
    assert_fp32_close(ops.selfcond_proj(*cuda, backend="kernel").cpu(), ref32, rel=1e-4)  # TF32 may be on
    bf = [None if t is None else t.bfloat16() for t in cuda]
    out = ops.selfcond_proj(*bf, backend="kernel")
    assert_low_precision_close(out.cpu(), ref32, reference.selfcond_proj(*bf).cpu())


def test_selfcond_proj_grads():
    N, C, H = 333, 64, 96
    base = [torch.randn(N, C, device=DEV), torch.randn(N, C, device=DEV), *selfcond_params(C, H, device=DEV)]
    g = torch.randn(N, H, device=DEV)

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in base]
        fn(*leaves).backward(g)
        return [t.grad for t in leaves]

    for a, b in zip(grads(lambda *a: ops.selfcond_proj(*a, backend="kernel")), grads(reference.selfcond_proj)):
        assert_fp32_close(a, b, rel=1e-3)


@pytest.mark.parametrize("shape", [(1, 8), (1031, 512), (7, 13), (2, 3)])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                    (torch.float32, torch.bfloat16)])
def test_flow_step_matches_cpu_kernel(shape, dtypes):
    zt, xt = dtypes
    g = torch.Generator().manual_seed(0)
    z = torch.randn(*shape, generator=g).to(zt)
    xc, xu = (torch.randn(*shape, generator=g).to(xt) for _ in range(2))
    mask = torch.rand(shape[:-1], generator=g) < 0.3
    xcond = torch.randn(*shape, generator=g).to(zt)
    kw = dict(t=0.3, t_next=0.4, cfg=2.0, seed=11, offset=5)
    for alpha in (1.0, 0.8):
        cpu = ops.flow_step(z, xc, xu, mask, xcond, alpha=alpha, backend="kernel", **kw)
        gpu = ops.flow_step(*(t.to(DEV) for t in (z, xc, xu, mask, xcond)), alpha=alpha, backend="kernel", **kw)
        assert torch.equal(gpu[1].cpu(), cpu[1])  # x_hat: identical arithmetic
        if alpha == 1.0:
            assert torch.equal(gpu[0].cpu(), cpu[0])
        else:  # CUDA's logf/sinf/cosf may differ from glibc's by an ulp or two
            tol = 1e-5 if zt == torch.float32 else torch.finfo(zt).eps
            assert max_err(gpu[0].cpu(), cpu[0]) <= tol * max(1.0, cpu[0].float().abs().max().item())


def test_flow_step_noise_independent_of_launch_shape():
    z = torch.zeros(4099, 37, device=DEV)
    kw = dict(t=0.0, t_next=0.0, alpha=0.0, seed=3, offset=9, backend="kernel")
    full = ops.flow_step(z, z, **kw)[0]
    part = ops.flow_step(z[:1000], z[:1000], **kw)[0]
    assert torch.equal(full[:1000], part)
    unaligned = ops.flow_step(z.view(-1)[1:].view(-1, 2), z.view(-1)[1:].view(-1, 2), **kw)[0]  # scalar path
    assert unaligned.shape == (4099 * 37 // 2, 2)
    eps = full.double()
    assert abs(eps.mean().item()) < 0.01 and abs(eps.var().item() - 1.0) < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,H,C,V", [(1, 16, 8, 5), (1031, 768, 512, 32128), (47, 64, 384, 30522)])
def test_unembed_argmax(dtype, N, H, C, V):
    h = torch.randn(N, H, device=DEV).to(dtype)
    w = decode_head_params(H, C, V, dtype=dtype, device=DEV)
    ids, best = ops.unembed_argmax(h, *w, backend="kernel")
    logits = reference.decode_logits(h, *w)
    top2 = logits.topk(min(2, V), dim=1).values
    clear = (top2[:, 0] - top2[:, -1]) > (1e-4 if dtype == torch.float32 else 3e-2) * logits.abs().max()
    assert torch.equal(ids[clear], logits.argmax(1)[clear])
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert max_err(best, logits.max(1).values) <= tol * logits.abs().max().item()


def test_unembed_argmax_ties_and_tiles():
    h = torch.randn(64, 16, device=DEV)
    P, p, U, u = decode_head_params(16, 8, 1000, device=DEV)
    U[:, 700] = U[:, 3]
    u[3] = u[700] = 100.0
    for tile in (0, 7, 512):
        assert ops.unembed_argmax(h, P, p, U, u, vocab_tile=tile, backend="kernel")[0].eq(3).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy(dtype):
    N, H, C, V = 1031, 96, 64, 32128
    h = torch.randn(N, H)
    params = decode_head_params(H, C, V)
    targets = torch.randint(0, V, (N,))
    targets[::5] = -100
    mask = torch.rand(N) < 0.9

    def run(fn, ts, device, **kw):
        leaves = [t.to(device).clone().requires_grad_() for t in ts]
        loss = fn(*leaves, targets.to(device), mask.to(device), **kw)
        loss.backward()
        return [loss.detach().cpu()] + [t.grad.cpu() for t in leaves]

    ref32 = run(reference.linear_cross_entropy, [h, *params], "cpu")
    lp = [t.to(dtype) for t in (h, *params)]
    got = run(ops.linear_cross_entropy, lp, DEV, backend="kernel")
    if dtype == torch.float32:
        for a, b in zip(got, ref32):
            assert_fp32_close(a, b, rel=1e-3)  # cuBLAS may use TF32
    else:
        torch_bf16 = run(reference.linear_cross_entropy, lp, DEV)
        for a, b, t in zip(got, ref32, torch_bf16):
            assert_low_precision_close(a, b, t)


def test_opcheck_cuda():
    z = torch.randn(5, 8, device=DEV)
    sc = [t.requires_grad_() for t in selfcond_params(8, 12, R=4, device=DEV)]
    torch.library.opcheck(torch.ops.elf_fast.selfcond_proj.default, (z.requires_grad_(), None, *sc))
    torch.library.opcheck(torch.ops.elf_fast.flow_step.default,
                          (z.detach(), z.detach(), None, None, None, 0.2, 0.3, 1.0, 0.9, 2.0, 0.05, 1, 2))
    h = torch.randn(5, 16, device=DEV)
    head = decode_head_params(16, 8, 50, device=DEV)
    torch.library.opcheck(torch.ops.elf_fast.unembed_argmax.default, (h, *head, 16))
    leaves = [t.clone().requires_grad_() for t in (h, *head)]
    tg = torch.randint(0, 50, (5,), device=DEV)
    torch.library.opcheck(torch.ops.elf_fast.linear_cross_entropy.default, (*leaves, tg, None, True, 2))


def test_decode_head_peak_memory_elf_b():
    """ELF-B sizes: the (32768, 32128) fp32 logits would be 4.2 GB."""
    N, H, C, V = 32768, 768, 512, 32128
    h = torch.randn(N, H, device=DEV, dtype=torch.bfloat16)
    params = decode_head_params(H, C, V, dtype=torch.bfloat16, device=DEV)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ops.unembed_argmax(h, *params, backend="kernel")
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 512 * 2**20
    targets = torch.randint(0, V, (N,), device=DEV)
    leaves = [t.requires_grad_() for t in (h, *params)]
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ops.linear_cross_entropy(*leaves, targets, backend="kernel").backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 1024 * 2**20


def _one_rounding(out, ref):
    ulp = {torch.float32: 2e-6, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[ref.dtype]
    diff = (out.float().cpu() - ref.float().cpu()).abs()
    assert bool((diff <= ref.float().cpu().abs() * ulp + 1e-5).all()), f"max diff {diff.max().item():.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,D", [(1, 8), (47, 384), (1031, 768), (5, 4097)])
def test_rms_norm(dtype, rows, D):
    x, w = (torch.randn(rows, D, device=DEV) * 3).to(dtype), torch.randn(D, device=DEV)
    _one_rounding(ops.rms_norm(x, w, backend="kernel"), reference.rms_norm(x, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,heads,hd", [(1, 1, 1, 2), (2, 47, 3, 16), (2, 1036, 12, 64), (1, 9, 2, 128)])
def test_qk_norm_rope(dtype, B, T, heads, hd):
    qkv = torch.randn(B, T, 3 * heads * hd, device=DEV).to(dtype)
    wq, wk = torch.randn(hd, device=DEV), torch.randn(hd, device=DEV)
    ang = torch.arange(T, device=DEV, dtype=torch.float32)[:, None] * torch.rand(hd // 2, device=DEV)
    cos, sin = ang.cos(), ang.sin()
    got = ops.qk_norm_rope(qkv, wq, wk, cos, sin, heads, backend="kernel")
    want = reference.qk_norm_rope(qkv, wq, wk, cos, sin, heads)
    for g, r in zip(got, want):
        assert g.shape == (B, heads, T, hd) and g.is_contiguous()
        _one_rounding(g, r)
    cpu = ops.qk_norm_rope(*(t.cpu() for t in (qkv, wq, wk, cos, sin)), heads, backend="kernel")
    for g, c in zip(got, cpu):
        _one_rounding(g, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 2), (47, 1022), (32, 1036, 6144 // 3)])
def test_swiglu(dtype, shape):
    u = (torch.randn(shape, device=DEV) * 4).to(dtype)
    _one_rounding(ops.swiglu(u, backend="kernel"), reference.swiglu(u))


def test_opcheck_cuda_block_ops():
    x, w = torch.randn(5, 16, device=DEV), torch.randn(16, device=DEV)
    torch.library.opcheck(torch.ops.elf_fast.rms_norm.default, (x, w, 1e-6))
    qkv = torch.randn(2, 7, 48, device=DEV)
    cs = torch.rand(7, 4, device=DEV)
    torch.library.opcheck(torch.ops.elf_fast.qk_norm_rope.default,
                          (qkv, torch.randn(8, device=DEV), torch.randn(8, device=DEV), cs, cs.clone(), 2, 1e-6))
    torch.library.opcheck(torch.ops.elf_fast.swiglu.default, (torch.randn(4, 3, 10, device=DEV),))


@pytest.mark.parametrize("masked", [False, True])
def test_attention_backend_order_gives_the_same_network(masked, monkeypatch):
    # ELF_FAST_SDPA=cudnn (cuDNN attention first) against PyTorch's own order, bf16 blocks, ELF-B
    # head layout (12 heads of 64) at 12 + 300 positions, with and without key padding: forward
    # outputs and the gradients training would take.
    from elf_fast.model import create_model

    torch.manual_seed(0)
    model = create_model("ELF-B", latent_dim=64, vocab_size=97, max_length=300, depth=2).to(DEV)
    model.set_block_dtype(torch.bfloat16)
    z = torch.randn(2, 300, 64, device=DEV)
    t, w = torch.rand(2, device=DEV), torch.ones(2, device=DEV)
    mask = None
    if masked:
        mask = torch.ones(2, 300, dtype=torch.bool, device=DEV)
        mask[1, 250:] = False
    outs, grads = {}, {}
    for choice in ("cudnn", "torch"):
        monkeypatch.setenv("ELF_FAST_SDPA", choice)
        model.zero_grad()
        h = model(z, t, w, attn_mask=mask)[1].float()
        h.square().mean().backward()
        outs[choice] = h.detach()
        grads[choice] = model.blocks[0].attn.qkv.weight.grad.float()
    for got, ref in ((outs["cudnn"], outs["torch"]), (grads["cudnn"], grads["torch"])):
        assert torch.isfinite(got).all()
        assert (got - ref).abs().max() <= 0.03 * ref.abs().max()


def test_compiled_cuda_graph_sampling_matches_eager():
    # compile_model(mode="reduce-overhead"): each forward replayed from a CUDA graph (bf16 blocks);
    # two sampling runs so the second one replays the recorded graphs
    from elf_fast.model import create_model
    from elf_fast.sampling import SamplerConfig, compile_model, sample_latents

    torch.manual_seed(0)
    model = create_model("ELF-T", latent_dim=64, vocab_size=97, max_length=48).to(DEV).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.set_block_dtype(torch.bfloat16)
    cfg = SamplerConfig(steps=4)
    want = sample_latents(model, 3, 48, cfg, seed=2)
    compile_model(model, "reduce-overhead")
    for _ in range(2):
        got = sample_latents(model, 3, 48, cfg, seed=2)
        assert (got - want).abs().max() <= 0.02 * want.abs().max()

"""The transformer-block element-wise ops: rms_norm, qk_norm_rope, swiglu (each kernel test runs
on the CPU kernel, the emulated CUDA kernel and, with a GPU, the CUDA kernel)."""
import pytest
import torch
import torch.nn.functional as F

from elf_fast import ops, reference
from conftest import assert_fp32_close, requires_emu, requires_kernels


def assert_one_rounding(out, ref):
    """Kernel and reference both compute in fp32 and round once: they agree to a unit in the
    last place of the low-precision format (the fp32 sums may differ in order)."""
    ulp = {torch.float32: 2e-6, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[ref.dtype]
    diff = (out.float().cpu() - ref.float().cpu()).abs()
    bound = ref.float().cpu().abs() * ulp + 1e-6
    assert out.dtype == ref.dtype
    assert bool((diff <= bound).all()), f"max excess {(diff - bound).max().item():.3e}"


def rope(T, hd, theta=10000.0, prefix=0):
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    ang[:prefix] = 0.0
    return ang.cos().float(), ang.sin().float()


# ---------------------------------------------------------------- rms_norm
@pytest.mark.parametrize("shape", [(1, 8), (47, 384), (3, 5, 96), (1031, 512), (2, 7), (5, 4097), (0, 16)])
def test_rms_norm_matches_reference_fp32(kdev, shape):
    torch.manual_seed(shape[-1])
    x = kdev.to(torch.randn(shape) * 3)
    w = kdev.to(torch.randn(shape[-1]))
    out = ops.rms_norm(x, w, 1e-6, backend=kdev.backend)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert_fp32_close(out, reference.rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_low_precision(kdev, dtype):
    torch.manual_seed(0)
    x = torch.randn(47, 384).to(device=kdev.device, dtype=dtype)
    w = torch.randn(384).to(device=kdev.device, dtype=dtype)
    assert_one_rounding(ops.rms_norm(x, w, 1e-6, backend=kdev.backend), reference.rms_norm(x, w, 1e-6))


def test_rms_norm_is_the_models_module():
    from elf_fast.model import RMSNorm
    m = RMSNorm(40, 1e-6)
    with torch.no_grad():
        m.weight.normal_()
    x = torch.randn(2, 9, 40)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * m.weight
    with torch.no_grad():
        assert_fp32_close(m(x), want)


# ---------------------------------------------------------------- qk_norm_rope
@pytest.mark.parametrize("B,T,heads,hd", [(1, 1, 1, 2), (2, 47, 3, 16), (3, 13, 12, 64), (1, 1036, 2, 32),
                                         (1, 9, 2, 128), (1, 5, 3, 6)])
def test_qk_norm_rope_matches_reference_fp32(kdev, B, T, heads, hd):
    torch.manual_seed(T)
    qkv = kdev.to(torch.randn(B, T, 3 * heads * hd) * 2)
    wq, wk = kdev.to(torch.randn(hd), torch.randn(hd))
    cos, sin = kdev.to(*rope(T, hd, prefix=min(T, 12)))
    got = ops.qk_norm_rope(qkv, wq, wk, cos, sin, heads, 1e-6, backend=kdev.backend)
    want = reference.qk_norm_rope(qkv, wq, wk, cos, sin, heads, 1e-6)
    for g, w in zip(got, want):
        assert g.shape == (B, heads, T, hd) and g.is_contiguous() and g.dtype == torch.float32
        assert_fp32_close(g, w)
    assert torch.equal(got[2], want[2])  # v is moved, not computed


@requires_kernels
def test_qk_norm_rope_reference_is_norm_then_rotation():
    """The reference written the long way: per-head RMSNorm, then the interleaved rotation."""
    torch.manual_seed(1)
    B, T, heads, hd = 2, 5, 2, 8
    qkv = torch.randn(B, T, 3 * heads * hd)
    wq, wk = torch.randn(hd), torch.randn(hd)
    cos, sin = rope(T, hd)
    q = qkv[..., : heads * hd].view(B, T, heads, hd).transpose(1, 2)
    qn = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6) * wq
    a, b = qn[..., 0::2], qn[..., 1::2]
    rot = torch.empty_like(qn)
    rot[..., 0::2], rot[..., 1::2] = a * cos - b * sin, b * cos + a * sin
    got = ops.qk_norm_rope(qkv, wq, wk, cos, sin, heads, 1e-6, backend="kernel")
    assert_fp32_close(got[0], rot)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_qk_norm_rope_low_precision(kdev, dtype):
    torch.manual_seed(2)
    B, T, heads, hd = 2, 33, 4, 32
    qkv = torch.randn(B, T, 3 * heads * hd).to(device=kdev.device, dtype=dtype)
    wq, wk = kdev.to(torch.randn(hd), torch.randn(hd))
    cos, sin = kdev.to(*rope(T, hd))
    got = ops.qk_norm_rope(qkv, wq, wk, cos, sin, heads, 1e-6, backend=kdev.backend)
    want = reference.qk_norm_rope(qkv, wq, wk, cos, sin, heads, 1e-6)
    for g, w in zip(got, want):
        assert_one_rounding(g, w)


# ---------------------------------------------------------------- swiglu
@pytest.mark.parametrize("shape", [(1, 2), (47, 768), (3, 5, 34), (1031, 1024), (0, 8)])
def test_swiglu_matches_reference_fp32(kdev, shape):
    torch.manual_seed(shape[-1])
    u = kdev.to(torch.randn(shape) * 4)
    out = ops.swiglu(u, backend=kdev.backend)
    assert out.shape == (*shape[:-1], shape[-1] // 2)
    a, b = u.chunk(2, -1)
    assert_fp32_close(out, F.silu(a) * b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_swiglu_low_precision(kdev, dtype):
    torch.manual_seed(3)
    u = (torch.randn(47, 512) * 4).to(device=kdev.device, dtype=dtype)
    assert_one_rounding(ops.swiglu(u, backend=kdev.backend), reference.swiglu(u))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("F_", [1, 7, 8, 15, 16, 17, 37])
def test_swiglu_tails_and_special_values(kdev, dtype, F_):
    """Row lengths around the vector widths (8 and 16 lanes), and inf / NaN / huge inputs, which
    must come out as PyTorch's silu(a) * b gives them (silu(-inf) is NaN there too)."""
    torch.manual_seed(F_)
    u = torch.randn(5, 2 * F_) * 6
    specials = torch.tensor([float("inf"), float("-inf"), float("nan"), 60000.0, -60000.0, 0.0, -0.0])
    a = u[:, :F_].reshape(-1)
    a[: min(len(specials), a.numel())] = specials[: a.numel()]
    u = u.to(device=kdev.device, dtype=dtype)
    out, ref = ops.swiglu(u, backend=kdev.backend).cpu(), reference.swiglu(u).cpu()
    nan = ref.isnan()
    assert torch.equal(out.isnan(), nan)
    out, ref = out.masked_fill(nan, 0), ref.masked_fill(nan, 0)
    assert torch.equal(out.isinf(), ref.isinf()) and torch.equal(out[out.isinf()], ref[ref.isinf()])
    fin = ~ref.isinf()
    if dtype == torch.float32:
        assert_fp32_close(out[fin], ref[fin])
    else:
        assert_one_rounding(out[fin], ref[fin])


# ---------------------------------------------------------------- framework
def test_opcheck(kdev):
    torch.manual_seed(4)
    x, w = kdev.to(torch.randn(5, 16), torch.randn(16))
    torch.library.opcheck(kdev.op("rms_norm"), (x, w, 1e-6))
    qkv, cos, sin = kdev.to(torch.randn(2, 7, 3 * 2 * 8), *rope(7, 8))
    torch.library.opcheck(kdev.op("qk_norm_rope"), (qkv, *kdev.to(torch.randn(8), torch.randn(8)), cos, sin, 2, 1e-6))
    torch.library.opcheck(kdev.op("swiglu"), (kdev.to(torch.randn(4, 3, 10)),))


# ---------------------------------------------------------------- training: the CPU backward kernels
def _grads(outs, inputs, cotangents):
    """torch.autograd.grad for the inputs that require grad (None for the others)."""
    outs = outs if isinstance(outs, tuple) else (outs,)
    # (the reference's v does not require grad when only the weights do)
    pairs = [(o, c) for o, c in zip(outs, cotangents) if o.requires_grad]
    want = [t for t in inputs if t.requires_grad]
    got = iter(torch.autograd.grad([o for o, _ in pairs], want, [c for _, c in pairs]))
    return [next(got) if t.requires_grad else None for t in inputs]


def _non_contiguous_like(t):
    """Random values shaped like t, in a transposed (non-contiguous) layout."""
    g = torch.randn(*reversed(t.shape)).to(t.dtype).permute(*reversed(range(t.dim())))
    assert not g.is_contiguous() or t.dim() < 2 or 1 in t.shape[-2:]
    return g


def assert_bf16_grad_close(out, ref):
    """bf16 gradients: kernel and reference both compute in float32 and round once to bf16, but
    sum in different orders, and d(rms)/dx subtracts two float32 terms: within a bf16 unit
    (2^-7 relative) of the reference plus 1e-3 of its scale."""
    assert out.dtype == ref.dtype == torch.bfloat16
    o, r = out.float(), ref.float()
    bound = r.abs() * 2.0**-7 + 1e-3 * max(r.abs().max().item(), 1e-6)
    excess = ((o - r).abs() - bound).max().item()
    assert excess <= 0, f"max excess over the bf16 bound {excess:.3e}"


def _check_grads(got, want, dtype):
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is None:
            continue
        assert g.shape == w.shape and g.dtype == w.dtype
        if dtype == torch.float32 or g.dtype == torch.float32 and dtype != torch.bfloat16:
            assert_fp32_close(g, w, rel=1e-5)
        elif g.dtype == torch.bfloat16:
            assert_bf16_grad_close(g, w)
        else:  # float32 weight gradients of bf16 inputs: float32 sums of bf16-exact products
            assert_fp32_close(g, w, rel=1e-4)


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,heads,hd", [(2, 13, 3, 64), (3, 77, 2, 32), (1, 1, 1, 2), (2, 9, 4, 6), (64, 76, 2, 64)])
@pytest.mark.parametrize("grad_q,grad_w", [(True, True), (True, False), (False, True)])
def test_qk_norm_rope_backward_matches_reference_autograd(dtype, B, T, heads, hd, grad_q, grad_w):
    torch.manual_seed(B * T + hd)
    qkv = (torch.randn(B, T, 3 * heads * hd) * 2).to(dtype).requires_grad_(grad_q)
    wq, wk = torch.randn(hd).requires_grad_(grad_w), torch.randn(hd).requires_grad_(grad_w)
    cos, sin = rope(T, hd, prefix=min(T, 12))
    outs = ops.qk_norm_rope(qkv, wq, wk, cos, sin, heads, 1e-6, backend="kernel")
    assert "elf_fast_qk_norm_rope" in type(outs[0].grad_fn).__name__
    cot = tuple(_non_contiguous_like(o) for o in outs)  # as SDPA's backward may hand them over
    got = _grads(outs, (qkv, wq, wk), cot)
    want = _grads(reference.qk_norm_rope(qkv, wq, wk, cos, sin, heads, 1e-6), (qkv, wq, wk), cot)
    _check_grads(got, want, dtype)
    if grad_q:  # v's gradient is moved, not computed
        H = heads * hd
        assert torch.equal(got[0][..., 2 * H:], want[0][..., 2 * H:])


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 2), (47, 768), (3, 5, 34), (64, 76, 682), (7, 30)])
def test_swiglu_backward_matches_reference_autograd(dtype, shape):
    torch.manual_seed(shape[-1])
    u = (torch.randn(shape) * 4).to(dtype).requires_grad_()
    y = ops.swiglu(u, backend="kernel")
    assert "elf_fast_swiglu" in type(y.grad_fn).__name__
    cot = (_non_contiguous_like(y),)
    _check_grads(_grads(y, (u,), cot), _grads(reference.swiglu(u), (u,), cot), dtype)


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 8), (47, 384), (3, 5, 96), (64, 76, 128), (5, 7)])
@pytest.mark.parametrize("grad_x,grad_w", [(True, True), (True, False), (False, True)])
def test_rms_norm_backward_matches_reference_autograd(dtype, shape, grad_x, grad_w):
    torch.manual_seed(shape[-1])
    x = (torch.randn(shape) * 3).to(dtype).requires_grad_(grad_x)
    w = torch.randn(shape[-1]).requires_grad_(grad_w)
    y = ops.rms_norm(x, w, 1e-6, backend="kernel")
    assert "elf_fast_rms_norm" in type(y.grad_fn).__name__
    cot = (_non_contiguous_like(y),)
    _check_grads(_grads(y, (x, w), cot), _grads(reference.rms_norm(x, w, 1e-6), (x, w), cot), dtype)


@requires_kernels
def test_backward_kernels_match_float64_reference():
    """gradcheck proper needs float64, which the kernels reject (check_float_tensor): instead the
    float32 kernel gradients against the reference's gradients computed in float64."""
    torch.manual_seed(8)
    B, T, heads, hd = 2, 11, 2, 32
    qkv, wq, wk = torch.randn(B, T, 3 * heads * hd), torch.randn(hd), torch.randn(hd)
    cos, sin = rope(T, hd)
    ins = [t.clone().requires_grad_() for t in (qkv, wq, wk)]
    outs = ops.qk_norm_rope(*ins, cos, sin, heads, 1e-6, backend="kernel")
    cot = tuple(torch.randn_like(o) for o in outs)
    got = torch.autograd.grad(outs, ins, cot)
    ins64 = [t.double().requires_grad_() for t in (qkv, wq, wk)]
    q, k, v64 = ins64[0].view(B, T, 3, heads, hd).permute(2, 0, 3, 1, 4)
    c, s_ = cos.double(), sin.double()

    def norm_rotate(x, w):  # the reference's formula, all in float64
        y = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w).unflatten(-1, (-1, 2))
        a, b = y[..., 0], y[..., 1]
        return torch.stack([a * c - b * s_, b * c + a * s_], dim=-1).flatten(-2)

    q64, k64 = norm_rotate(q, ins64[1]), norm_rotate(k, ins64[2])
    want = torch.autograd.grad((q64, k64, v64), ins64, tuple(c.double() for c in cot))
    for g, w in zip(got, want):
        assert_fp32_close(g, w.float(), rel=1e-5)


@requires_kernels
def test_training_on_the_cpu_runs_the_backward_kernels():
    """Under grad on the CPU the kernel forward runs and autograd calls the backward kernels
    (seen by the profiler); ELF_FAST_BACKEND=reference and backend='reference' keep the reference."""
    torch.manual_seed(9)
    qkv = torch.randn(2, 5, 3 * 2 * 8, requires_grad=True)
    wq, wk = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    cos, sin = rope(5, 8)
    x, w = torch.randn(3, 16, requires_grad=True), torch.randn(16, requires_grad=True)
    u = torch.randn(4, 10, requires_grad=True)

    def step(**kw):
        loss = sum(o.sum() for o in ops.qk_norm_rope(qkv, wq, wk, cos, sin, 2, **kw))
        loss = loss + ops.rms_norm(x, w, **kw).sum() + ops.swiglu(u, **kw).sum()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            loss.backward()
        return {e.name for e in prof.events()}

    names = step()
    for op in ("qk_norm_rope", "rms_norm", "swiglu"):
        assert f"elf_fast::{op}_backward" in names
    assert not any(n.startswith("elf_fast::") for n in step(backend="reference"))
    os_env = pytest.MonkeyPatch()
    os_env.setenv("ELF_FAST_BACKEND", "reference")
    try:
        assert not any(n.startswith("elf_fast::") for n in step())
    finally:
        os_env.undo()
    # cos / sin that require grad: the kernel gives them no gradient, so the reference runs
    cos_g = cos.clone().requires_grad_()
    q = ops.qk_norm_rope(qkv, wq, wk, cos_g, sin, 2)[0]
    assert "elf_fast" not in type(q.grad_fn).__name__
    q = ops.qk_norm_rope(qkv.detach(), wq.detach(), wk.detach(), cos_g, sin, 2)[0]  # cos alone needs grad
    assert q.requires_grad and "elf_fast" not in type(q.grad_fn).__name__
    # the emulated CUDA kernels have no backward: under grad, the reference (no emulation loaded)
    assert "elf_fast" not in type(ops.swiglu(u, backend="emu").grad_fn).__name__
    # without grad, the forward kernels as before
    with torch.no_grad():
        assert ops.swiglu(u).grad_fn is None


@requires_emu
def test_raw_op_backward_without_a_kernel_uses_the_reference_vjp():
    """The emulation namespace (like CUDA) has no backward kernels: a graph through its raw op
    still differentiates, by the reference's vector-Jacobian product."""
    torch.manual_seed(10)
    u = torch.randn(3, 12, requires_grad=True)
    (g,) = torch.autograd.grad(torch.ops.elf_fast_emu.swiglu(u).pow(2).sum(), u)
    (want,) = torch.autograd.grad(reference.swiglu(u).pow(2).sum(), u)
    assert_fp32_close(g, want)


@requires_kernels
def test_double_backward_differentiates_the_reference():
    """create_graph=True: the backward kernels have no backward of their own, so the formulas
    take the reference's vector-Jacobian product, which autograd can differentiate again."""
    torch.manual_seed(14)
    qkv = torch.randn(2, 5, 3 * 2 * 8, requires_grad=True)
    wq, wk = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    cos, sin = rope(5, 8)
    u = torch.randn(4, 10, requires_grad=True)
    x, w = torch.randn(3, 16, requires_grad=True), torch.randn(16, requires_grad=True)
    ins = (qkv, wq, wk, u, x, w)

    def second_order(qk, sw, rn):
        loss = sum(o.pow(2).sum() for o in qk(qkv, wq, wk, cos, sin, 2)) + sw(u).pow(2).sum() + rn(x, w).pow(2).sum()
        gs = torch.autograd.grad(loss, ins, create_graph=True)
        return torch.autograd.grad(sum(g.pow(2).sum() for g in gs), ins)

    got = second_order(*(lambda *a, f=f: getattr(ops, f)(*a, backend="kernel")
                         for f in ("qk_norm_rope", "swiglu", "rms_norm")))
    want = second_order(reference.qk_norm_rope, reference.swiglu, reference.rms_norm)
    for g, r in zip(got, want):
        assert_fp32_close(g, r, rel=1e-4)


@requires_kernels
def test_opcheck_with_gradients():
    torch.manual_seed(11)
    x, w = torch.randn(5, 16, requires_grad=True), torch.randn(16, requires_grad=True)
    torch.library.opcheck(torch.ops.elf_fast.rms_norm.default, (x, w, 1e-6))
    qkv, cos, sin = torch.randn(2, 7, 3 * 2 * 8, requires_grad=True), *rope(7, 8)
    wq, wk = torch.randn(8, requires_grad=True), torch.randn(8)
    torch.library.opcheck(torch.ops.elf_fast.qk_norm_rope.default, (qkv, wq, wk, cos, sin, 2, 1e-6))
    torch.library.opcheck(torch.ops.elf_fast.swiglu.default, (torch.randn(4, 3, 10, requires_grad=True),))
    g = torch.randn(2, 2, 7, 8)
    torch.library.opcheck(torch.ops.elf_fast.qk_norm_rope_backward.default,
                          (g, g, g, qkv.detach(), wq.detach(), wk, cos, sin, 2, 1e-6))
    torch.library.opcheck(torch.ops.elf_fast.swiglu_backward.default, (torch.randn(4, 5), torch.randn(4, 10)))
    torch.library.opcheck(torch.ops.elf_fast.rms_norm_backward.default,
                          (torch.randn(5, 16), x.detach(), w.detach(), 1e-6))


@requires_kernels
def test_backward_kernels_check_their_gradients():
    qkv = torch.randn(2, 5, 3 * 2 * 8)
    cos, sin = rope(5, 8)
    g = torch.randn(2, 2, 5, 8)
    with pytest.raises(RuntimeError, match="'grad_k' must have shape"):
        torch.ops.elf_fast.qk_norm_rope_backward(g, g[:, :1], g, qkv, torch.randn(8), torch.randn(8), cos, sin, 2,
                                                 1e-6)
    with pytest.raises(RuntimeError, match="'grad_v' must be a BFloat16 tensor"):
        torch.ops.elf_fast.qk_norm_rope_backward(g.bfloat16(), g.bfloat16(), g, qkv.bfloat16(), torch.randn(8),
                                                 torch.randn(8), cos, sin, 2, 1e-6)
    with pytest.raises(RuntimeError, match="'grad' must be contiguous"):
        torch.ops.elf_fast.swiglu_backward(torch.randn(5, 4).t(), torch.randn(4, 10))
    with pytest.raises(RuntimeError, match="'grad' must have shape"):
        torch.ops.elf_fast.rms_norm_backward(torch.randn(5, 8), torch.randn(5, 16), torch.randn(16), 1e-6)


@requires_kernels
def test_torch_compile_traces_the_training_path():
    """fullgraph compile of a forward + backward through the block ops (fakes of the backward ops)."""
    torch._dynamo.reset()
    torch.manual_seed(12)
    T, heads, hd = 9, 2, 8
    x = torch.randn(2, T, heads * hd, requires_grad=True)
    w = torch.randn(heads * hd, requires_grad=True)
    wq, wk = torch.randn(hd, requires_grad=True), torch.randn(hd, requires_grad=True)
    qkv_w = torch.randn(3 * heads * hd, heads * hd) / 4
    cos, sin = rope(T, hd)

    def loss(x, w, wq, wk):
        q, k, v = ops.qk_norm_rope(ops.rms_norm(x, w) @ qkv_w.t(), wq, wk, cos, sin, heads)
        return (ops.swiglu(torch.cat([q, k], -1)) * v).sum()

    args = (x, w, wq, wk)
    compiled = torch.compile(loss, fullgraph=True)
    compiled(*args)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = torch.autograd.grad(compiled(*args), args)
    names = {e.name for e in prof.events()}
    assert {f"elf_fast::{op}_backward" for op in ("rms_norm", "qk_norm_rope", "swiglu")} <= names
    want = torch.autograd.grad(loss(*args), args)
    for g, ref in zip(got, want):
        assert_fp32_close(g, ref, rel=1e-5)


@requires_kernels
def test_model_gradients_kernel_equal_reference(monkeypatch):
    """A whole ELF-XS forward + backward in float32: the backward kernels vs the references."""
    from elf_fast.model import create_model
    torch.manual_seed(13)
    model = create_model("ELF-XS", latent_dim=16, vocab_size=50)
    z, x_prev = torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    t, w_sc = torch.rand(2), torch.tensor([1.0, 3.0])
    params = [p for p in model.parameters() if p.requires_grad]

    def grads():
        out = model(z, t, w_sc, x_prev)
        out = out[0] if isinstance(out, tuple) else out
        return torch.autograd.grad(out.pow(2).sum(), params, allow_unused=True)

    got = grads()
    monkeypatch.setenv("ELF_FAST_BACKEND", "reference")
    want = grads()
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert_fp32_close(g, w, rel=1e-4)


@requires_kernels
def test_bad_inputs_name_the_argument():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="'weight'"):
        ops.rms_norm(x, torch.randn(7))
    with pytest.raises(ValueError, match="'x'"):
        ops.rms_norm(torch.randint(0, 3, (4, 8)), torch.randn(8))
    with pytest.raises(ValueError, match="'eps'"):
        ops.rms_norm(x, torch.randn(8), -1.0)
    with pytest.raises(RuntimeError, match="'weight'"):
        torch.ops.elf_fast.rms_norm(x, torch.randn(8).double(), 1e-6)
    qkv = torch.randn(2, 5, 3 * 2 * 8)
    cos, sin = rope(5, 8)
    with pytest.raises(ValueError, match="'qkv'"):
        ops.qk_norm_rope(qkv, torch.randn(8), torch.randn(8), cos, sin, 5)
    with pytest.raises(ValueError, match="'k_weight'"):
        ops.qk_norm_rope(qkv, torch.randn(8), torch.randn(6), cos, sin, 2)
    with pytest.raises(ValueError, match="'cos'"):
        ops.qk_norm_rope(qkv, torch.randn(8), torch.randn(8), cos[:4], sin, 2)
    with pytest.raises(ValueError, match="'sin'"):
        ops.qk_norm_rope(qkv, torch.randn(8), torch.randn(8), cos, sin.double(), 2)
    with pytest.raises(ValueError, match="'num_heads'"):
        ops.qk_norm_rope(qkv, torch.randn(8), torch.randn(8), cos, sin, 0)
    with pytest.raises(RuntimeError, match="'qkv'"):
        torch.ops.elf_fast.qk_norm_rope(qkv[:, :, :47], torch.randn(8), torch.randn(8), cos, sin, 2, 1e-6)
    with pytest.raises(ValueError, match="'u'"):
        ops.swiglu(torch.randn(4, 7))
    with pytest.raises(RuntimeError, match="'u'"):
        torch.ops.elf_fast.swiglu(torch.randn(4, 7))


@requires_kernels
def test_fake_implementations_run_the_wrappers_rules():
    """Tracing (meta tensors; torch.compile with dynamic shapes) reports a bad shape with the wrapper's
    ValueError instead of tracing on to a RuntimeError when the kernel runs."""
    x = torch.randn(4, 8, device="meta")
    with pytest.raises(ValueError, match=r"'weight' must have shape \(8,\), got \(7,\)"):
        torch.ops.elf_fast.rms_norm(x, torch.randn(7, device="meta"), 1e-6)
    with pytest.raises(ValueError, match=r"'u' must be \(..., 2F\) with F > 0, got \(4, 7\)"):
        torch.ops.elf_fast.swiglu(torch.randn(4, 7, device="meta"))
    qkv = torch.randn(2, 5, 47, device="meta")
    wq, cos = torch.randn(8, device="meta"), torch.randn(5, 4, device="meta")
    with pytest.raises(ValueError, match=r"'qkv' last dim 47 is not 3 \* num_heads \(2\)"):
        torch.ops.elf_fast.qk_norm_rope(qkv, wq, wq, cos, cos, 2, 1e-6)

    torch._dynamo.reset()
    qkv = torch.randn(2, 5, 3 * 2 * 8)
    cos, sin = rope(5, 8)

    def attn(qkv, cos, sin):
        return torch.ops.elf_fast.qk_norm_rope(qkv, torch.ones(8), torch.ones(8), cos, sin, 2, 1e-6)[0]

    compiled = torch.compile(attn, backend="aot_eager", fullgraph=True, dynamic=True)
    assert_fp32_close(compiled(qkv, cos, sin), attn(qkv, cos, sin))
    with pytest.raises(RuntimeError, match=r"ValueError.*'cos' must have shape \(s\d+, .*\), got \(s\d+, s\d+\)"):
        compiled(qkv, cos[:4], sin)


def test_reference_backend_checks_the_rules_too():
    with pytest.raises(ValueError, match=r"'weight' must have shape \(8,\), got \(7,\)"):
        ops.rms_norm(torch.randn(4, 8), torch.randn(7), backend="reference")
    qkv = torch.randn(2, 5, 3 * 2 * 8)
    cos, sin = rope(5, 8)
    with pytest.raises(ValueError, match="'num_heads' must be a positive int, got True"):
        ops.qk_norm_rope(qkv, torch.randn(8), torch.randn(8), cos, sin, True, backend="reference")
    with pytest.raises(ValueError, match=r"'sin' has dtype torch.float16, expected torch.float32"):
        ops.qk_norm_rope(qkv, torch.randn(8), torch.randn(8), cos, sin.half(), 2, backend="reference")
    with pytest.raises(ValueError, match="'u' must be"):
        ops.swiglu(torch.randn(4, 7), backend="reference")


@requires_kernels
def test_non_contiguous_inputs_are_handled_by_the_wrapper():
    x = torch.randn(16, 6).t()  # (6, 16), non-contiguous
    w = torch.randn(16)
    assert_fp32_close(ops.rms_norm(x, w, backend="kernel"), reference.rms_norm(x, w))
    u = torch.randn(10, 4).t()
    assert_fp32_close(ops.swiglu(u, backend="kernel"), reference.swiglu(u))


@requires_kernels
def test_torch_compile_fullgraph_traces_the_block_ops():
    torch._dynamo.reset()
    torch.manual_seed(6)
    cfg_T, heads, hd = 9, 2, 8
    x, w = torch.randn(2, cfg_T, heads * hd), torch.randn(heads * hd)
    qkv_w = torch.randn(3 * heads * hd, heads * hd) / 4
    wq, wk = torch.randn(hd), torch.randn(hd)
    cos, sin = rope(cfg_T, hd)

    def block(x):
        h = ops.rms_norm(x, w)
        q, k, v = ops.qk_norm_rope(h @ qkv_w.t(), wq, wk, cos, sin, heads)
        return ops.swiglu(torch.cat([q, k], -1)) + v

    got = torch.compile(block, fullgraph=True)(x)
    assert_fp32_close(got, block(x))


@requires_kernels
def test_model_forward_kernel_equals_reference(monkeypatch):
    """A whole ELF forward: kernels for the block ops vs the references (fp32, no grad)."""
    from elf_fast.model import create_model
    torch.manual_seed(7)
    model = create_model("ELF-XS", latent_dim=16, vocab_size=50).eval()
    z, x_prev = torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    t, w_sc = torch.rand(2), torch.tensor([1.0, 3.0])
    with torch.no_grad():
        got = model(z, t, w_sc, x_prev)
        monkeypatch.setenv("ELF_FAST_BACKEND", "reference")
        want = model(z, t, w_sc, x_prev)
    for g, w in zip(got, want):
        assert_fp32_close(g, w)

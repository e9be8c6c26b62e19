import pytest
import torch

from elf_fast import ops, reference
from conftest import (assert_fp32_close, assert_low_precision_close, requires_cuda, requires_emu, requires_kernels,
                      selfcond_params)

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


# ------------------------------------------------------ inference: the folded weights
FOLDED_SHAPES = [(0, 8, 16, 4), (1, 8, 16, 4), (1, 3, 7, 5), (33, 20, 40, 16), (47, 384, 96, 128),
                 (257, 512, 768, 128)]  # (N, C, H, R): empty, one row, odd N, C not a multiple of 8


def _folded_args(N, C, H, R, with_x, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, C, generator=g)
    x = torch.randn(N, C, generator=g) if with_x else None
    w = selfcond_params(C, H, R=R, seed=seed)
    return z, x, w


def _exact(z, x, w):
    """selfcond_proj in float64 on the unfolded weights: the value the folded op approximates."""
    return reference.selfcond_proj(z.double(), None if x is None else x.double(), *[t.double() for t in w])


def test_fold_on_the_cpu_is_the_in_op_premultiply():
    """On the CPU the fold is selfcond_proj's own fp32 premultiply (so folded inference and the training
    op agree bit for bit there), and as accurate as an fp32 GEMM."""
    w_sc, b_sc, w_p1, _, _ = selfcond_params(24, 8, R=16)
    m, b1 = ops.fold_selfcond_weights(w_sc, b_sc, w_p1)
    assert m.shape == (16, 48) and b1.shape == (16,) and m.dtype == b1.dtype == torch.float32
    assert torch.equal(m, torch.mm(w_p1, w_sc)) and torch.equal(b1, torch.mv(w_p1, b_sc))
    exact_m = w_p1.double() @ w_sc.double()
    assert ((m.double() - exact_m).abs() <= 24 * 2.0**-24 * (w_p1.double().abs() @ w_sc.double().abs())).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # ambient autocast does not reach it
        assert torch.equal(ops.fold_selfcond_weights(w_sc, b_sc, w_p1)[0], m)
    mb, _ = ops.fold_selfcond_weights(*[t.bfloat16() for t in (w_sc, b_sc, w_p1)])
    assert mb.dtype == torch.bfloat16 and torch.equal(mb, torch.mm(w_p1.bfloat16().float(),
                                                                   w_sc.bfloat16().float()).bfloat16())
    with pytest.raises(ValueError, match=r"'w_p1' must be \(R, 24\)"):
        ops.fold_selfcond_weights(w_sc, b_sc, w_p1.t())
    with pytest.raises(ValueError, match="'b_sc' has dtype"):
        ops.fold_selfcond_weights(w_sc, b_sc.bfloat16(), w_p1)


@requires_cuda
def test_fold_on_cuda_is_the_float64_product_rounded_once():
    """On CUDA the fold ignores the global TF32 setting: float64 products, one rounding."""
    w_sc, b_sc, w_p1, _, _ = selfcond_params(512, 8, R=128)
    exact_m, exact_b = w_p1.double() @ w_sc.double(), w_p1.double() @ b_sc.double()
    previous = torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        m, b1 = ops.fold_selfcond_weights(w_sc.cuda(), b_sc.cuda(), w_p1.cuda())
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous
    assert ((m.cpu().double() - exact_m).abs() <= exact_m.abs() * 2.0**-24).all()  # within half an ulp
    assert ((b1.cpu().double() - exact_b).abs() <= exact_b.abs() * 2.0**-24).all()


@pytest.mark.parametrize("N,C,H,R", FOLDED_SHAPES)
@pytest.mark.parametrize("with_x", [True, False])
def test_folded_is_fp32_accurate(kdev, N, C, H, R, with_x):
    """Within 1e-5 (of the output's scale) of the exact result, on every device: on CUDA the GEMMs
    are 3xTF32 on tensor cores, in the emulation the same split with fp32 GEMMs, on the CPU fp32."""
    z, x, w = _folded_args(N, C, H, R, with_x, seed=N + C)
    m, b1 = ops.fold_selfcond_weights(*w[:3])
    out = ops.selfcond_proj_folded(*kdev.to(z, x, m, b1, w[3], w[4]), backend=kdev.backend)
    assert out.shape == (N, H) and out.dtype == torch.float32 and out.device.type == kdev.device
    out = out.cpu()
    assert_fp32_close(out, reference.selfcond_proj_folded(z, x, m, b1, w[3], w[4]), rel=1e-5)
    assert_fp32_close(out.double(), _exact(z, x, w), rel=1e-5)
    # and the training op on the unfolded weights agrees
    assert_fp32_close(out, ops.selfcond_proj(*kdev.to(z, x, *w), backend=kdev.backend).cpu(), rel=1e-5)


@pytest.mark.parametrize("form", ["fused", "split"])
@pytest.mark.parametrize("N,C,H,R", [(70, 64, 200, 128), (9, 16, 24, 8)])
def test_folded_fused_and_split_forms(kdev, monkeypatch, form, N, C, H, R):
    """fp32 on CUDA has two forms: the fused kernel (both GEMMs per 64-row tile, 3xTF32 mma.sync with
    the split in registers, the intermediate in shared memory) and 3xTF32 through split operands and
    cuBLAS (ELF_FAST_SELFCOND_FUSED=0). Row and column tails (70 rows, H 200 over two 128-column
    passes) and a rank below the tile (R 8); within 1e-5 of the exact result either way."""
    monkeypatch.setenv("ELF_FAST_SELFCOND_FUSED", "1" if form == "fused" else "0")
    for with_x in (True, False):
        z, x, w = _folded_args(N, C, H, R, with_x, seed=N + H)
        m, b1 = ops.fold_selfcond_weights(*w[:3])
        out = ops.selfcond_proj_folded(*kdev.to(z, x, m, b1, w[3], w[4]), backend=kdev.backend).cpu()
        assert out.shape == (N, H)
        assert_fp32_close(out.double(), _exact(z, x, w), rel=1e-5)


@requires_emu
@pytest.mark.parametrize("block,kept,nearest", [(8, 22, False), (4, 22, False), (8, 24, False), (4, 23, True)])
def test_folded_fused_under_tensor_core_numerics(monkeypatch, block, kept, nearest):
    """The fused 3xTF32 kernel stays within 1e-5 of the exact result at C 512 when the emulated tensor
    cores accumulate by the bit-level model (aligned blocks, truncated to `kept` bits, rounded toward
    zero or to nearest). It needs the per-chunk accumulation (add_acc in selfcond_proj.cu): with one
    running accumulator over K = 2C the toward-zero bias reached 1.0e-5 at 22 kept bits; now 2e-6."""
    from elf_fast import emulation

    monkeypatch.setenv("ELF_FAST_SELFCOND_FUSED", "1")
    z, x, w = _folded_args(64, 512, 136, 128, True, seed=5)
    m, b1 = ops.fold_selfcond_weights(*w[:3])
    with emulation.guarded_memory():
        default = ops.selfcond_proj_folded(z, x, m, b1, w[3], w[4], backend="emu")
        with emulation.tensor_core_numerics(block, kept, nearest):
            out = ops.selfcond_proj_folded(z, x, m, b1, w[3], w[4], backend="emu")
    assert not torch.equal(out, default)  # the model changed the arithmetic
    exact = _exact(z, x, w)
    assert_fp32_close(out.double(), exact, rel=1e-5 if kept < 24 else 2e-6)
    assert_fp32_close(default.double(), exact, rel=1e-6)


def test_folded_reference_is_the_unfolded_reference():
    z, x, w = _folded_args(9, 12, 10, 6, True)
    w_sc, b_sc, w_p1, w_p2, b_p2 = [t.double() for t in w]
    got = reference.selfcond_proj_folded(z.double(), x.double(), w_p1 @ w_sc, w_p1 @ b_sc, w_p2, b_p2)
    assert torch.allclose(got, _exact(z, x, w), rtol=1e-12, atol=1e-12)
    no_x = reference.selfcond_proj_folded(z, None, *ops.fold_selfcond_weights(*w[:3]), w[3], w[4])
    assert_fp32_close(no_x, reference.selfcond_proj(z, torch.zeros_like(z), *w))


def test_folded_bf16_error_within_twice_torch_bf16(kdev):
    z, x, w = _folded_args(47, 384, 96, 128, True, seed=1)
    ref32 = _exact(z, x, w).float()
    bf = [t.bfloat16() for t in (z, x, *w)]
    m, b1 = ops.fold_selfcond_weights(*bf[2:5])
    out = ops.selfcond_proj_folded(*kdev.to(bf[0], bf[1], m, b1, bf[5], bf[6]), backend=kdev.backend).cpu()
    assert out.dtype == torch.bfloat16
    assert_low_precision_close(out, ref32, reference.selfcond_proj(*bf))


def test_folded_keeps_leading_dims(kdev):
    z, x = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    w = selfcond_params(8, 24, R=6)
    m, b1 = ops.fold_selfcond_weights(*w[:3])
    out = ops.selfcond_proj_folded(*kdev.to(z, x, m, b1, w[3], w[4]), backend=kdev.backend)
    assert out.shape == (3, 5, 24)
    assert_fp32_close(out.cpu(), reference.selfcond_proj(z, x, *w), rel=1e-5)


@pytest.mark.parametrize("with_x", [True, False])
def test_folded_opcheck(kdev, with_x):
    z, x, w = _folded_args(7, 8, 12, 4, with_x)
    m, b1 = ops.fold_selfcond_weights(*w[:3])
    torch.library.opcheck(kdev.op("selfcond_proj_folded"), kdev.to(z, x, m, b1, w[3], w[4]))


def test_folded_with_a_graph_to_build_runs_the_reference():
    """No backward kernel: with an input that requires grad the wrapper runs the reference, which
    autograd differentiates."""
    z, x, w = _folded_args(6, 8, 12, 4, True)
    m, b1 = ops.fold_selfcond_weights(*w[:3])
    zz = z.clone().requires_grad_()
    ops.selfcond_proj_folded(zz, x, m, b1, w[3], w[4], backend="kernel").sum().backward()
    zr = z.clone().requires_grad_()
    reference.selfcond_proj_folded(zr, x, m, b1, w[3], w[4]).sum().backward()
    assert torch.equal(zz.grad, zr.grad)


@requires_kernels
def test_folded_bad_inputs_name_the_argument():
    z, x, w = _folded_args(4, 8, 16, 4, True)
    m, b1 = ops.fold_selfcond_weights(*w[:3])
    with pytest.raises(ValueError, match=r"'m' must be \(R, 16\), got \(4, 8\)"):
        ops.selfcond_proj_folded(z, x, m[:, :8], b1, w[3], w[4])
    with pytest.raises(ValueError, match=r"'b1' must have shape \(4,\)"):
        ops.selfcond_proj_folded(z, x, m, b1[:3], w[3], w[4])
    with pytest.raises(ValueError, match="'x_prev' has dtype torch.bfloat16"):
        ops.selfcond_proj_folded(z, x.bfloat16(), m, b1, w[3], w[4])
    with pytest.raises(RuntimeError, match=r"'w_p2' must be \(H, 4\)"):
        torch.ops.elf_fast.selfcond_proj_folded(z, x, m, b1, w[3][:, :3].contiguous(), w[4])
    meta = [t.to("meta") for t in (z, x, m, b1, w[3], w[4])]
    assert torch.ops.elf_fast.selfcond_proj_folded(*meta).shape == (4, 16)
    with pytest.raises(ValueError, match=r"'b_p2' must have shape \(16,\)"):
        torch.ops.elf_fast.selfcond_proj_folded(*meta[:5], meta[5][:3])


# ------------------------------------------------------------------ the TF32 split
def _tf32_round(u: int) -> int:
    """csrc/split_gemm.h's rule, re-derived on the uint32 bit pattern."""
    mag, sign = u & 0x7FFFFFFF, u & 0x80000000
    if mag >= 0x7F800000:  # inf, NaN: unchanged
        return u
    return min((mag + 0x1000) & 0xFFFFE000, 0x7F7FE000) | sign


def _bits(x: torch.Tensor) -> list[int]:
    return [v & 0xFFFFFFFF for v in x.view(torch.int32).tolist()]


def _floats(bits: list[int]) -> torch.Tensor:
    return torch.tensor([b - (1 << 32) if b >= 1 << 31 else b for b in bits], dtype=torch.int32).view(torch.float32)


def _expected_split(bits: list[int]) -> tuple[list[int], list[int]]:
    his, los = [], []
    for u in bits:
        if u & 0x7F800000 == 0x7F800000:  # inf, NaN: hi = x, lo = +0
            his.append(u)
            los.append(0)
            continue
        hi = _tf32_round(u)
        diff = _floats([u]).double() - _floats([hi]).double()  # exact, and exactly representable in fp32
        his.append(hi)
        los.append(_tf32_round(_bits(diff.float())[0]))
    return his, los


EDGE_BITS = [
    0x00000000, 0x3F800000,              # 0, 1
    0x3F801000, 0x3F803000,              # exact ties (even and odd kept mantissa): away from zero
    0x3F800FFF, 0x3F801001,              # just below / above a tie
    0x3F81FFFF, 0x3FFFFFFF, 0x3F7FFFFF,  # all low bits set; carries into the exponent (-> 2.0, -> 1.0)
    0x00000001, 0x00000FFF, 0x00001000, 0x00001001, 0x00001FFF, 0x007FF000, 0x007FFFFF,  # subnormals
    0x00800000, 0x00801000,              # the smallest normal, a tie there
    0x7F7FFFFF, 0x7F7FF000, 0x7F7FEFFF, 0x7F7FE000,  # FLT_MAX and friends: never round to inf
    0x7F800000,                          # inf
    0x7FC00000, 0x7F800001, 0x7F801FFF, 0x7FFFFFFF,  # NaNs (payloads only in the low bits too)
    0x34000000, 0x33800000, 0x4B7FFFFF,  # 2^-23, 2^-24, 2^24 - 1
]
EDGE_BITS = EDGE_BITS + [b | 0x80000000 for b in EDGE_BITS]  # and every one negated


def _split_fn(kdev):
    if kdev.name == "cuda_emu":
        from elf_fast import emulation
        return emulation.load()._tf32_split
    from elf_fast import _C
    return _C._tf32_split


def test_tf32_split_is_bit_exact(kdev):
    """The C++ loop (cpu), the CUDA kernel (cuda; emulated: cuda_emu) and the rule re-derived here agree
    bit for bit: edge values and 20,000 random bit patterns (every exponent, NaNs included)."""
    g = torch.Generator().manual_seed(7)
    rand = torch.randint(0, 1 << 32, (20000,), generator=g, dtype=torch.int64).tolist()
    bits = EDGE_BITS + rand
    x = _floats(bits)
    hi, lo = _split_fn(kdev)(kdev.to(x))
    want_hi, want_lo = _expected_split(bits)
    got_hi, got_lo = _bits(hi.cpu()), _bits(lo.cpu())
    bad = [(hex(b), hex(h), hex(wh), hex(l), hex(wl)) for b, h, wh, l, wl in zip(bits, got_hi, want_hi, got_lo, want_lo)
           if h != wh or l != wl]
    assert not bad, f"{len(bad)} mismatches (x, hi, want, lo, want), first: {bad[:5]}"
    # a 2-D, non-contiguous input is split elementwise into contiguous halves of its shape
    x2 = kdev.to(torch.randn(6, 10)).t()
    hi2, lo2 = _split_fn(kdev)(x2)
    assert hi2.shape == (10, 6) and hi2.is_contiguous()
    assert _bits(hi2.cpu().reshape(-1)) == _expected_split(_bits(x2.cpu().contiguous().reshape(-1)))[0]
    empty_hi, empty_lo = _split_fn(kdev)(kdev.to(torch.empty(0)))
    assert empty_hi.numel() == empty_lo.numel() == 0


def test_tf32_split_properties():
    """hi and lo are TF32 values (low 13 bits zero) and hi + lo is within 2^-22 |x| of x (normal x)."""
    x = torch.randn(100000) * torch.exp(torch.randn(100000) * 20).clamp(1e-30, 1e30)
    hi, lo = _tf32_split_py(x)
    assert ((hi.view(torch.int32) & 0x1FFF) == 0).all() and ((lo.view(torch.int32) & 0x1FFF) == 0).all()
    err = (x.double() - hi.double() - lo.double()).abs()
    assert (err <= x.double().abs() * 2.0**-22).all()
    assert ((x.double() - hi.double()).abs() <= x.double().abs() * 2.0**-11).all()


def _tf32_split_py(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule on tensors (int64 arithmetic on the bit pattern), for finite x."""
    def rnd(t):
        u = t.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        mag, sign = u & 0x7FFFFFFF, u & 0x80000000
        r = torch.clamp_max((mag + 0x1000) & 0xFFFFE000, 0x7F7FE000) | sign
        r = torch.where(r >= 1 << 31, r - (1 << 32), r)
        return r.to(torch.int32).view(torch.float32)
    hi = rnd(x)
    return hi, rnd(x - hi)


@pytest.mark.parametrize("K", [128, 1024])
def test_3xtf32_error_bound(K):
    """The error analysis of csrc/split_gemm.h, checked in float64 (where, as on a TF32 tensor core, the
    products of TF32 values are exact): |ab - (hi hi + hi lo + lo hi)| <= 3 2^-22 (1 + 2^-10) sum |a||b|
    elementwise, ~1e-6 of the output here; one TF32 product alone errs ~1,000 times more."""
    torch.manual_seed(K)
    a, b = torch.randn(64, K), torch.randn(K, 32)
    (ah, al), (bh, bl) = _tf32_split_py(a), _tf32_split_py(b)
    a64, b64 = a.double(), b.double()
    exact = a64 @ b64
    three = ah.double() @ bh.double() + ah.double() @ bl.double() + al.double() @ bh.double()
    bound = 3 * 2.0**-22 * (1 + 2.0**-10) * (a64.abs() @ b64.abs())
    assert ((three - exact).abs() <= bound).all()
    rel = ((three - exact).abs().max() / exact.abs().max()).item()
    one = ((ah.double() @ bh.double() - exact).abs().max() / exact.abs().max()).item()
    assert rel < 1e-6 and one > 300 * rel


# ---------------------------------------------------- the TF32 tensor-core scope (global setting)
@pytest.fixture
def matmul_precision_restored():
    """Leave the process-wide float32 matmul settings as they were (these tests mix the APIs)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cuda0 = torch.backends.cuda.matmul.fp32_precision
        mkldnn0 = torch.backends.mkldnn.matmul.fp32_precision
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_float32_matmul_precision("highest" if cuda0 != "tf32" else "high")
        torch.backends.cuda.matmul.fp32_precision = cuda0
        torch.backends.mkldnn.matmul.fp32_precision = mkldnn0


def _state():
    return torch.backends.cuda.matmul.fp32_precision, torch.get_float32_matmul_precision()


@pytest.mark.parametrize("module", ["_C", "_C_emu"])
def test_tf32_scope_sets_and_restores_the_global_setting(module, matmul_precision_restored):
    if module == "_C":
        from elf_fast import _C as mod
    else:
        from elf_fast import emulation
        mod = emulation.load()
        if mod is None:
            pytest.skip("no CUDA emulation module")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy TF32 API may warn that it is deprecated
        _check_tf32_scope(mod)


def _check_tf32_scope(mod):
    if _state() != ("none", "highest"):
        pytest.skip(f"the process does not start from the default matmul precision: {_state()}")
    assert mod._tf32_scope_probe() == "tf32" and _state() == ("none", "highest")
    with pytest.raises(RuntimeError, match="failing on purpose inside the scope \\(saw 'tf32'\\)"):
        mod._tf32_scope_probe(fail=True)
    assert _state() == ("none", "highest")                     # restored by the destructor
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert mod._tf32_scope_probe() == "tf32" and _state() == ("ieee", "highest")
    torch.backends.cuda.matmul.allow_tf32 = True               # on already: left alone
    assert mod._tf32_scope_probe() == "tf32" and _state() == ("tf32", "high")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("medium")               # legacy API: tf32 on CUDA
    assert mod._tf32_scope_probe() == "tf32" and _state() == ("tf32", "medium")
    torch.set_float32_matmul_precision("high")
    torch.backends.cuda.matmul.fp32_precision = "ieee"         # mixed APIs: not touched, fp32 GEMMs
    assert mod._tf32_scope_probe() == "ieee" and torch.backends.cuda.matmul.fp32_precision == "ieee"


# ------------------------------------------------ the model's cache of the folded weights (CPU)
def _tiny_model(seed=0):
    from elf_fast.model import create_model

    torch.manual_seed(seed)
    model = create_model("ELF-T", latent_dim=24, vocab_size=31, max_length=16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _weights(model):
    return (model.self_cond_proj.weight, model.self_cond_proj.bias, model.text_proj.proj1.weight,
            model.text_proj.proj2.weight, model.text_proj.proj2.bias)


def _check_fresh(model, z, x):
    """embed_input equals the training op on the model's current weights (a stale fold would not)."""
    with torch.no_grad():
        got = model.embed_input(z, x)
        want = reference.selfcond_proj(z, x, *[w.float() for w in _weights(model)])
    assert_fp32_close(got.float(), want, rel=1e-5)


@pytest.fixture
def calls(monkeypatch):
    """Counts of folds and of the folded / training op calls made by the model."""
    counts = {"fold": 0, "folded": 0, "train_op": 0}
    for name, key in (("fold_selfcond_weights", "fold"), ("selfcond_proj_folded", "folded"),
                      ("selfcond_proj", "train_op")):
        real = getattr(ops, name)

        def counted(*a, _real=real, _key=key, **k):
            counts[_key] += 1
            return _real(*a, **k)

        monkeypatch.setattr(ops, name, counted)
    return counts


def test_cache_is_used_for_inference_only(calls):
    model = _tiny_model()
    z, x = torch.randn(2, 5, 24), torch.randn(2, 5, 24)
    with torch.no_grad():
        for _ in range(3):
            model.embed_input(z, x)
    assert calls == {"fold": 1, "folded": 3, "train_op": 0}  # folded once, reused
    model.embed_input(z, x)  # grad enabled and the weights require grad: the differentiable op
    assert calls["train_op"] == 1 and calls["folded"] == 3
    model.requires_grad_(False)
    model.embed_input(z, x)  # grad enabled, but nothing requires grad: cached
    assert calls["folded"] == 4 and calls["fold"] == 1
    model.embed_input(z.clone().requires_grad_(), x)  # an input requires grad
    assert calls["train_op"] == 2
    model.train()
    with torch.no_grad():
        model.embed_input(z, x)  # training mode (e.g. its no-grad self-conditioning pass): never cached
    assert calls["train_op"] == 3 and calls["fold"] == 1
    model.eval()
    with torch.inference_mode():
        out = model.embed_input(z, x)
    assert calls["fold"] == 2 and calls["folded"] == 5  # train()/eval() cleared the cache
    with torch.no_grad():
        assert torch.equal(model.embed_input(z, x), out)  # an inference-mode fold is usable after it
    _check_fresh(model, z, x)


@pytest.mark.parametrize("update", ["adam_foreach", "adam_for_loop", "sgd", "load_state_dict",
                                    "load_state_dict_assign", "copy_under_no_grad", "to_bf16_and_back"])
def test_weight_updates_invalidate_the_cache(update, calls):
    model = _tiny_model(1)
    z, x = torch.randn(2, 5, 24), torch.randn(2, 5, 24)
    _check_fresh(model, z, x)
    assert calls["fold"] == 1
    w_sc = model.self_cond_proj.weight
    if update.startswith("adam") or update == "sgd":
        params = [model.self_cond_proj.weight, model.self_cond_proj.bias, model.text_proj.proj1.weight]
        opt = (torch.optim.SGD(params, lr=0.5) if update == "sgd" else
               torch.optim.Adam(params, lr=0.1, foreach=update == "adam_foreach"))
        model.embed_input(z, x).square().sum().backward()  # eval mode, grad enabled: the differentiable op
        opt.step()
    elif update.startswith("load_state_dict"):
        state = {k: v + 0.3 * torch.randn_like(v) if k.startswith(("self_cond_proj", "text_proj.proj1")) else v
                 for k, v in model.state_dict().items()}
        model.load_state_dict(state, assign=update.endswith("assign"))
    elif update == "copy_under_no_grad":
        with torch.no_grad():
            model.text_proj.proj1.weight.copy_(torch.randn_like(model.text_proj.proj1.weight))
    else:  # a round trip through bfloat16: new values, the same dtype, device and _version, a new storage
        before, version = w_sc.detach().clone(), w_sc._version
        model.to(torch.bfloat16)
        with torch.no_grad():
            assert model.embed_input(z, x).dtype == torch.bfloat16
        assert calls["fold"] == 2 and model._selfcond_cache.get(*_weights(model)[:3])[0].dtype == torch.bfloat16
        model.to(torch.float32)
        assert model.self_cond_proj.weight is w_sc and w_sc.dtype == torch.float32
        assert w_sc._version == version and not torch.equal(w_sc, before)  # only the storage tells
    _check_fresh(model, z, x)
    assert calls["fold"] == (3 if update == "to_bf16_and_back" else 2)


def test_device_change_invalidates_the_cache():
    """A second device here is "meta" (no data; the forward itself cannot run there): the fold the
    model hands to the folded op follows the weights to it."""
    model = _tiny_model(2)
    z = torch.randn(1, 3, 24)
    _check_fresh(model, z, None)
    with torch.no_grad():
        assert all(t.device.type == "cpu" for t in model._folded_selfcond_weights(z, None))
    model.to("meta")
    with torch.no_grad():
        m, b1 = model._folded_selfcond_weights(z.to("meta"), None)
    assert m.device.type == b1.device.type == "meta" and m.shape == (128, 48)
    model.to_empty(device="cpu")  # meta -> cpu: new (uninitialised) storages, folded again
    with torch.no_grad():
        assert model._folded_selfcond_weights(z, None)[0].device.type == "cpu"


@requires_kernels
def test_on_the_cpu_cached_inference_equals_the_training_op_bit_for_bit():
    model = _tiny_model(6)
    z, x = torch.randn(2, 7, 24), torch.randn(2, 7, 24)
    t, w = torch.rand(2), torch.ones(2)
    with torch.no_grad():
        cached = model(z, t, w, x_prev=x)[0], model(z, t, w, x_prev=None)[0]
        assert model._selfcond_cache._value is not None
        model.train()
        uncached = model(z, t, w, x_prev=x)[0], model(z, t, w, x_prev=None)[0]
    assert all(torch.equal(a, b) for a, b in zip(cached, uncached))


def test_fused_optimizer_steps_in_training_mode_are_seen():
    """torch's fused optimizers update in place without bumping _version: the cache is cleared by
    train()/eval() and never used in training mode."""
    model = _tiny_model(3)
    z, x = torch.randn(2, 5, 24), torch.randn(2, 5, 24)
    _check_fresh(model, z, x)
    params = [model.self_cond_proj.weight, model.text_proj.proj1.weight]
    opt = torch.optim.Adam(params, lr=0.1, fused=True)
    model.train()
    model.embed_input(z, x).square().sum().backward()
    version = params[0]._version
    opt.step()
    assert params[0]._version == version  # why the cache cannot rely on _version alone here
    model.eval()
    _check_fresh(model, z, x)


def test_cache_is_not_state_and_not_copied():
    import copy
    import pickle

    model = _tiny_model(4)
    keys = set(model.state_dict())
    z = torch.randn(1, 4, 24)
    _check_fresh(model, z, z)
    assert model._selfcond_cache._value is not None
    assert set(model.state_dict()) == keys and not any("cache" in k for k in keys)
    twin = copy.deepcopy(model)
    assert twin._selfcond_cache._value is None
    _check_fresh(twin, z, z)
    assert pickle.loads(pickle.dumps(model))._selfcond_cache._value is None


def test_model_compiles_with_the_cache():
    """torch.compile traces the inference forward without graph breaks: under tracing the cache is
    skipped (the graph runs selfcond_proj, which folds in-op); eager calls keep using it."""
    torch._dynamo.reset()
    model = _tiny_model(5)
    B, L = 2, 6
    z, x = torch.randn(B, L, 24), torch.randn(B, L, 24)
    t, w = torch.rand(B), torch.ones(B)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        want = model(z, t, w, x_prev=x)[0]
        got = compiled(z, t, w, x_prev=x)[0]
    assert_fp32_close(got, want, rel=1e-5)

import pytest
import torch

from elf_fast import ops, reference
from conftest import assert_fp32_close, decode_head_params, peak_rss_growth, requires_cuda, requires_kernels

# (N, H, C, V): every N, C and V of the issue appears at least once; V not a multiple of any tile
SHAPES = [(1, 16, 8, 5), (47, 64, 384, 30522), (1031, 32, 8, 32128), (47, 96, 512, 32128), (1031, 48, 512, 5),
          (1, 768, 512, 30522), (37, 24, 40, 2053)]


@pytest.mark.parametrize("N,H,C,V", SHAPES)
def test_matches_reference_fp32(kdev, N, H, C, V):
    kdev.skip_if_too_large_to_emulate(N * V)
    torch.manual_seed(N + V)
    h = kdev.to(torch.randn(N, H))
    w = kdev.to(*decode_head_params(H, C, V, seed=V))
    ids, best = ops.unembed_argmax(h, *w, backend=kdev.backend)
    ids_r, best_r = reference.unembed_argmax(h, *w)
    assert ids.dtype == torch.int64 and best.dtype == torch.float32 and ids.shape == (N,)
    logits = reference.decode_logits(h, *w)
    # an id may differ from the reference only where two logits tie to within rounding
    differ = ids != ids_r
    if differ.any():
        gap = (logits[differ].gather(1, ids_r[differ, None]) - logits[differ].gather(1, ids[differ, None])).abs()
        assert gap.max().item() <= 1e-5 * logits.abs().max().item()
    assert differ.float().mean().item() <= 0.01
    assert_fp32_close(best, best_r, rel=1e-4 if kdev.name == "cuda" else 2e-5)  # cuBLAS may use TF32


@pytest.mark.parametrize("tile", [1, 3, 7, 64, 4096])
def test_vocab_tile_does_not_change_the_answer(kdev, tile):
    h = kdev.to(torch.randn(33, 16))
    w = kdev.to(*decode_head_params(16, 8, 301))
    ids0, best0 = ops.unembed_argmax(h, *w, backend=kdev.backend)
    ids, best = ops.unembed_argmax(h, *w, vocab_tile=tile, backend=kdev.backend)
    assert torch.equal(ids, ids0)
    assert torch.allclose(best, best0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tile", [0, 2, 5])
def test_ties_go_to_the_lowest_index(kdev, tile):
    torch.manual_seed(0)
    h = torch.randn(6, 16)
    P, p, U, u = decode_head_params(16, 8, 12)
    U[:, 9] = U[:, 3]
    U[:, 4] = U[:, 3]
    u[3] = u[4] = u[9] = 50.0  # three identical columns, far above the rest
    ids, _ = ops.unembed_argmax(*kdev.to(h, P, p, U, u), vocab_tile=tile, backend=kdev.backend)
    assert ids.tolist() == [3] * 6
    ids_r, _ = reference.unembed_argmax(h, P, p, U, u)
    assert ids_r.tolist() == [3] * 6


@pytest.mark.parametrize("tile", [0, 7, 512])
def test_ties_across_tiles_and_threads(kdev, tile):
    # equal maxima in different vocabulary tiles and, within a tile, in different threads' columns
    h = torch.randn(64, 16)
    P, p, U, u = decode_head_params(16, 8, 1000)
    U[:, 700] = U[:, 3]
    U[:, 130] = U[:, 3]
    u[3] = u[130] = u[700] = 100.0
    ids, _ = ops.unembed_argmax(*kdev.to(h, P, p, U, u), vocab_tile=tile, backend=kdev.backend)
    assert ids.eq(3).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(kdev, dtype):
    torch.manual_seed(1)
    N, H, C, V = 257, 64, 128, 4099
    h = torch.randn(N, H)
    w = decode_head_params(H, C, V)
    lp = [t.to(device=kdev.device, dtype=dtype) for t in (h, *w)]
    ids, best = ops.unembed_argmax(*lp, backend=kdev.backend)
    # the meaning is the fp32 head evaluated on the given low-precision values; on a GPU the GEMMs
    # take the low-precision activations (tensor cores, fp32 accumulation): a looser bound there
    logits = reference.decode_logits(*lp)
    gpu = kdev.name == "cuda"
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > (3e-2 if gpu else 1e-3) * logits.abs().max()
    ids_r = logits.argmax(1)
    assert torch.equal(ids[clear], ids_r[clear])
    assert_fp32_close(best, logits.max(1).values, rel=2e-2 if gpu else 1e-5)


def test_leading_dims(kdev):
    h = kdev.to(torch.randn(2, 3, 16))
    w = kdev.to(*decode_head_params(16, 8, 50))
    ids, best = ops.unembed_argmax(h, *w, backend=kdev.backend)
    assert ids.shape == (2, 3) and best.shape == (2, 3)
    assert torch.equal(ids.view(-1), reference.unembed_argmax(h.view(6, 16), *w)[0])


def test_empty_input(kdev):
    h = kdev.to(torch.randn(0, 16))
    ids, best = ops.unembed_argmax(h, *kdev.to(*decode_head_params(16, 8, 50)), backend=kdev.backend)
    assert ids.shape == (0,) and best.shape == (0,)


def test_opcheck(kdev):
    h = kdev.to(torch.randn(5, 16))
    w = kdev.to(*decode_head_params(16, 8, 50))
    torch.library.opcheck(kdev.op("unembed_argmax"), (h, *w, 16))


@requires_kernels
def test_bad_inputs_name_the_argument():
    h = torch.randn(4, 16)
    P, p, U, u = decode_head_params(16, 8, 50)
    with pytest.raises(ValueError, match="proj_kernel"):
        ops.unembed_argmax(h, P[:8], p, U, u)
    with pytest.raises(ValueError, match="unembed_bias"):
        ops.unembed_argmax(h, P, p, U, u[:10])
    with pytest.raises(ValueError, match="unembed_kernel.*dtype"):
        ops.unembed_argmax(h, P, p, U.bfloat16(), u)
    with pytest.raises(ValueError, match="vocab_tile"):
        ops.unembed_argmax(h, P, p, U, u, vocab_tile=-1)
    with pytest.raises(RuntimeError, match="'unembed_kernel' must be contiguous"):
        torch.ops.elf_fast.unembed_argmax(h, P, p, U.t().contiguous().t(), u, 0)
    with pytest.raises(RuntimeError, match="'proj_bias' must have shape"):
        torch.ops.elf_fast.unembed_argmax(h, P, p[:3], U, u, 0)


@requires_kernels
def test_fake_implementation_runs_the_wrappers_rules():
    """Tracing (meta or fake tensors, torch.compile) reports a bad shape with the wrapper's ValueError."""
    h = torch.randn(2, 3, 16, device="meta")
    P, p, U, u = (t.to("meta") for t in decode_head_params(16, 8, 50))
    ids, best = torch.ops.elf_fast.unembed_argmax(h, P, p, U, u, 0)
    assert ids.shape == best.shape == (2, 3) and ids.dtype == torch.int64
    with pytest.raises(ValueError, match=r"'unembed_kernel' must be \(8, V\) with V > 0, got \(8, 0\)"):
        torch.ops.elf_fast.unembed_argmax(h, P, p, U[:, :0], u[:0], 0)
    with pytest.raises(ValueError, match=r"'proj_kernel' must be \(16, C\), got \(8, 8\)"):
        torch.ops.elf_fast.unembed_argmax(h, P[:8], p, U, u, 0)
    with pytest.raises(ValueError, match="'vocab_tile' must be >= 0, got -1"):
        torch.ops.elf_fast.unembed_argmax(h, P, p, U, u, -1)


def test_reference_backend_checks_the_rules_too():
    h = torch.randn(4, 16)
    P, p, U, u = decode_head_params(16, 8, 50)
    with pytest.raises(ValueError, match=r"'unembed_bias' must have shape \(50,\), got \(10,\)"):
        ops.unembed_argmax(h, P, p, U, u[:10], backend="reference")
    with pytest.raises(ValueError, match="'h' must be float32, bfloat16 or float16"):
        ops.unembed_argmax(h.double(), P, p, U, u, backend="reference")


HEAD_SETUP = ("N, H, C, V = 16384, 32, 64, 32128\n"
              "h = torch.randn(N, H); P = torch.randn(H, C) / 6; p = torch.zeros(C); "
              "U = torch.randn(C, V) / 8; u = torch.zeros(V)")


@requires_kernels
def test_peak_memory_is_o_n_tile_not_o_n_v():
    """The (16384 x 32128) fp32 logits would be 2.1 GB; the kernel's extra peak must stay far below."""
    warm = "ops.unembed_argmax(h[:8], P, p, U, u, backend='kernel')"
    kernel = peak_rss_growth(HEAD_SETUP, warm, "ops.unembed_argmax(h, P, p, U, u, backend='kernel')")
    assert kernel < 64 * 2**20, f"kernel peak grew by {kernel / 2**20:.0f} MiB"
    ref = peak_rss_growth(HEAD_SETUP, warm, "reference.unembed_argmax(h, P, p, U, u)")
    assert ref > 16384 * 32128 * 4  # the probe does see the materialised logits


def test_parameters_that_require_grad_are_fine(kdev):
    """Model weights require grad; greedy decoding must still run (no graph is recorded)."""
    h = kdev.to(torch.randn(5, 16))
    w = [t.requires_grad_() for t in kdev.to(*decode_head_params(16, 8, 50))]
    ids, best = ops.unembed_argmax(h, *w, backend=kdev.backend)
    assert torch.equal(ids, reference.unembed_argmax(h, *[t.detach() for t in w])[0])


@requires_cuda
def test_decode_head_peak_memory_elf_b():
    """ELF-B sizes on a GPU: the (32768, 32128) fp32 logits would be 4.2 GB."""
    N, H, C, V = 32768, 768, 512, 32128
    h = torch.randn(N, H, device="cuda", dtype=torch.bfloat16)
    params = decode_head_params(H, C, V, dtype=torch.bfloat16, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ops.unembed_argmax(h, *params, backend="kernel")
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 512 * 2**20
    targets = torch.randint(0, V, (N,), device="cuda")
    leaves = [t.requires_grad_() for t in (h, *params)]
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ops.linear_cross_entropy(*leaves, targets, backend="kernel").backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 1024 * 2**20

import os
import subprocess
import sys
from typing import NamedTuple

import pytest
import torch

from elf_fast import emulation, ops

requires_kernels = pytest.mark.skipif(
    not ops.build_info()["extension_loaded"], reason="elf_fast._C is not built"
)
requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.build_info()["cuda_built"]),
    reason="needs a CUDA device and the CUDA kernels",
)

# The CUDA emulation module (elf_fast._C_emu): CI builds it with the package (ELF_FAST_EMU=1);
# otherwise it is compiled here on first use, once (ELF_FAST_EMU_BUILD=0 skips its tests instead).
_EMU = emulation.load(build=os.environ.get("ELF_FAST_EMU_BUILD", "1") != "0")
requires_emu = pytest.mark.skipif(_EMU is None, reason=f"no CUDA emulation module: {emulation.load_error()}")


class KernelDevice(NamedTuple):
    """Where a kernel test runs: ``device`` for the tensors, ``backend`` for elf_fast.ops."""

    name: str      # cpu | cuda_emu | cuda
    device: str    # cpu | cuda
    backend: str   # kernel | emu

    @property
    def cuda_code(self) -> bool:
        """Whether the CUDA source runs (on a GPU or emulated)."""
        return self.name != "cpu"

    def op(self, name: str):
        """The raw registered op (``torch.ops.elf_fast[_emu].<name>.default``), for opcheck."""
        return getattr(getattr(torch.ops, "elf_fast_emu" if self.backend == "emu" else "elf_fast"), name).default

    def skip_if_too_large_to_emulate(self, rows_x_vocab: int) -> None:
        """The emulator runs every CUDA thread as a fiber: decode-head cases above 1.5 M rows x
        vocabulary take seconds there, so it runs the smaller shapes only."""
        if self.name == "cuda_emu" and rows_x_vocab > 1_500_000:
            pytest.skip("too large for the emulator (the smaller shapes run there)")

    def to(self, *ts):
        out = tuple(None if t is None else t.to(self.device) for t in ts)
        return out if len(out) != 1 else out[0]


KERNEL_DEVICES = [
    pytest.param(KernelDevice("cpu", "cpu", "kernel"), id="cpu", marks=requires_kernels),
    pytest.param(KernelDevice("cuda_emu", "cpu", "emu"), id="cuda_emu", marks=requires_emu),
    pytest.param(KernelDevice("cuda", "cuda", "kernel"), id="cuda", marks=requires_cuda),
]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE set and an empty hub cache; returns the cache folder."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(params=KERNEL_DEVICES)
def kdev(request):
    """Each kernel test body runs three ways: the C++ CPU kernel, the CUDA kernel under the SIMT
    emulator (with guarded memory: any out-of-bounds access fails the test), the CUDA kernel on a GPU."""
    if request.param.name == "cuda_emu":
        with emulation.guarded_memory():
            yield request.param
    else:
        yield request.param


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def assert_fp32_close(out, ref, rel=2e-5):
    """Max abs error at most ``rel`` times the reference's scale (max |ref|)."""
    scale = max(ref.float().abs().max().item(), 1e-6) if ref.numel() else 1.0
    err = max_err(out, ref)
    assert err <= rel * scale, f"max abs err {err:.3e} > {rel:g} x scale {scale:.3e}"


def assert_low_precision_close(out, ref32, torch_lp, factor=2.0):
    """flash-attention's rule: error vs the fp32 reference at most ``factor`` x PyTorch's own low-precision error."""
    scale = max(ref32.float().abs().max().item(), 1e-6)
    err = max_err(out, ref32)
    base = max_err(torch_lp, ref32)
    assert err <= factor * base + 1e-6 * scale, f"err {err:.3e} > {factor} x torch's own {base:.3e}"


def tiny_elf(seed: int, latent_dim: int, vocab_size: int, max_length: int):
    """A random ELF-T whose every output is non-trivial (final_layer starts at zero: all weights are
    perturbed by N(0, 0.05^2))."""
    from elf_fast.model import create_model

    torch.manual_seed(seed)
    model = create_model("ELF-T", latent_dim=latent_dim, vocab_size=vocab_size, max_length=max_length)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def toy_batch(B: int, L: int, C: int, V: int, seed: int = 1, cond: bool = False, pad: bool = False,
              empty_row: int | None = None):
    """(x, targets, loss_mask, valid, cond_mask) of an objective's mini-batch: random latents and ids;
    ``pad``: the last 3 positions of rows 0 and 1 are padding (``valid`` False there, no loss; the
    network sees them, as in the packed layout); ``cond``: the first 4 positions are the
    condition; ``empty_row``: that row has no loss position."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, C, generator=g)
    targets = torch.randint(0, V, (B, L), generator=g)
    loss_mask = torch.ones(B, L, dtype=torch.bool)
    valid = cond_mask = None
    if pad:
        valid = torch.ones(B, L, dtype=torch.bool)
        valid[:2, -3:] = False
        loss_mask &= valid
    if empty_row is not None:
        loss_mask[empty_row] = False
    if cond:
        cond_mask = torch.zeros(B, L, dtype=torch.bool)
        cond_mask[:, :4] = True
        loss_mask &= ~cond_mask
    return x, targets, loss_mask, valid, cond_mask


def decode_head_params(H, C, V, dtype=torch.float32, device="cpu", seed=0):
    """Random decode-head weights with logits of a realistic spread (a few units)."""
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(H, C, generator=g) / H**0.5
    p = torch.randn(C, generator=g) * 0.1
    U = torch.randn(C, V, generator=g) * (3.0 / C**0.5)
    u = torch.randn(V, generator=g) * 0.1
    return [t.to(device=device, dtype=dtype) for t in (P, p, U, u)]


def selfcond_params(C, H, R=128, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w_sc = torch.randn(C, 2 * C, generator=g) / (2 * C) ** 0.5
    b_sc = torch.randn(C, generator=g) * 0.1
    w_p1 = torch.randn(R, C, generator=g) / C**0.5
    w_p2 = torch.randn(H, R, generator=g) / R**0.5
    b_p2 = torch.randn(H, generator=g) * 0.1
    return [t.to(device=device, dtype=dtype) for t in (w_sc, b_sc, w_p1, w_p2, b_p2)]


def peak_rss_growth(setup: str, warmup: str, call: str) -> int:
    """Bytes by which ``call`` raises the peak resident set of a fresh Python process.

    ``setup`` builds the inputs, ``warmup`` runs a small version of the call (allocator, thread
    pools), then ru_maxrss is read around ``call``. A separate process, because CPU tensors have
    no allocator statistics and the peak of this test process is already high.
    """
    code = "\n".join(["import resource, torch", "from elf_fast import ops, reference", "torch.manual_seed(0)", setup,
                      warmup, "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss", call,
                      "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)"])
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])

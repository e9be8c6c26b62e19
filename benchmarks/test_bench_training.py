"""One training step (docs/method.md §4 objective + AdamW): elf_fast (fused selfcond_proj with its
low-rank backward, chunked linear cross-entropy) vs the plain-PyTorch path (every op on its
reference: concatenation + Linear layers, materialised (N, V) logits, PyTorch's own attention
back-end order where elf_fast tries cuDNN attention first). On CUDA a third variant, ``compiled``,
is elf_fast with the network under ``torch.compile`` (as ``train.compile=default`` does); extra
warm-up steps absorb its compiles (one per self-conditioning sub-batch size until the batch
dimension is marked dynamic).

GPU: ELF-B, batch 32 x 1024, C 512 (a T5-small-sized random encoder output), V 32128, bf16 autocast.
CPU: ELF-T, batch 8 x 64, C 64, V 4096. Random weights and embeddings: speed does not depend on them.
"""

import contextlib

import pytest
import torch

from elf_fast.model import create_model
from elf_fast.objective import ObjectiveConfig, elf_loss, make_generator
from elf_fast.sampling import compile_model
from common import measure

GPU = dict(preset="ELF-B", C=512, V=32128, L=1024, B=32)
CPU_SIZE = dict(preset="ELF-T", C=64, V=4096, L=64, B=8)


@pytest.mark.parametrize("impl", ["kernel", "reference", "compiled"])
def test_training_step(benchmark, device, impl, monkeypatch):
    if impl == "compiled" and device != "cuda":
        pytest.skip("the compiled training step is timed on CUDA only")
    s = GPU if device == "cuda" else CPU_SIZE
    monkeypatch.setenv("ELF_FAST_BACKEND", "reference" if impl == "reference" else "kernel")
    monkeypatch.setenv("ELF_FAST_SDPA", "torch" if impl == "reference" else "cudnn")
    torch.manual_seed(0)
    model = create_model(s["preset"], latent_dim=s["C"], vocab_size=s["V"], max_length=s["L"]).to(device)
    if impl == "compiled":
        compile_model(model, "default", dynamic=None)  # as train.compile=default does
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    x = torch.randn(s["B"], s["L"], s["C"], device=device)  # what the frozen encoder would give
    targets = torch.randint(0, s["V"], (s["B"], s["L"]), device=device)
    mask = torch.ones(s["B"], s["L"], dtype=torch.bool, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    cfg = ObjectiveConfig()
    step = [0]

    def run():
        gen = make_generator(0, step[0], 0, device)
        step[0] += 1
        with amp:
            loss, _ = elf_loss(model, x, targets, mask, cfg=cfg, generator=gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    benchmark.group = f"training step {s['preset']} {device} B={s['B']} L={s['L']} V={s['V']}"
    tokens = s["B"] * s["L"]
    if impl == "compiled":
        for _ in range(3):  # compile for the first sub-batch sizes, then the dynamic-batch graph
            run()
    median = measure(benchmark, run, device, rounds=5, impl=impl)
    benchmark.extra_info["tokens/s"] = tokens / median
    print(f"\n{benchmark.group} [{impl}]: {tokens / median:,.0f} tokens/s")

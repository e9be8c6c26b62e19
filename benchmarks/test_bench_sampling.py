"""End-to-end sampling: elf_fast (fused ops, bf16 blocks on GPU) vs the plain-PyTorch path
(the same model with every op on its PyTorch reference, autocast instead of bf16 weights,
PyTorch's own attention back-end order). On CUDA a third variant, ``compiled``, is elf_fast
with the network under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs); its compile
happens in the warm-up runs, not in the timed ones.

GPU: ELF-B, C 512, V 32128, L 1024, batch 32, 32-step SDE, w_sc 3 (the port's anchor measurement).
CPU: ELF-T, C 64, V 4096, L 64, batch 4, 8-step SDE, so it runs in seconds.
Random weights: speed does not depend on them.

``test_student_sampling``: distilled students (training/distill.py) have the teacher's
architecture and sample in fewer steps (timed here with ODE steps on the uniform grid, w_sc 2.5,
what a student trained with ``--student-schedule grid`` recommends; the default students recommend
ODE steps on the logit-normal grid, one network call per step all the same); the rows give their
tokens/s against the teacher's default run (the baseline row).
"""

import contextlib

import pytest
import torch

from elf_fast.model import create_model
from elf_fast.sampling import SamplerConfig, compile_model, decode, sample_latents
from common import measure

GPU = dict(preset="ELF-B", C=512, V=32128, L=1024, B=32, steps=32)
CPU_SIZE = dict(preset="ELF-T", C=64, V=4096, L=64, B=4, steps=8)


@pytest.mark.parametrize("impl", ["kernel", "reference", "compiled"])
def test_sampling(benchmark, device, impl, monkeypatch):
    if impl == "compiled" and device != "cuda":
        pytest.skip("compiled sampling is timed on CUDA only (on the CPU it compiles for ~20 s and gains nothing)")
    s = GPU if device == "cuda" else CPU_SIZE
    torch.manual_seed(0)
    model = create_model(s["preset"], latent_dim=s["C"], vocab_size=s["V"], max_length=s["L"]).to(device).eval()
    autocast = contextlib.nullcontext()
    if impl in ("kernel", "compiled"):
        monkeypatch.setenv("ELF_FAST_BACKEND", "kernel")
        if device == "cuda":
            model.set_block_dtype(torch.bfloat16)
        if impl == "compiled":
            compile_model(model, "reduce-overhead")
    else:
        monkeypatch.setenv("ELF_FAST_BACKEND", "reference")
        monkeypatch.setenv("ELF_FAST_SDPA", "torch")
        if device == "cuda":
            autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    cfg = SamplerConfig(steps=s["steps"], sampler="sde", gamma=1.5, w_sc=3.0)

    def run():
        with autocast:
            z = sample_latents(model, s["B"], s["L"], cfg, seed=0, device=device)
            return decode(model, z, cfg.w_sc)

    benchmark.group = f"sampling {s['preset']} {device} B={s['B']} L={s['L']} {s['steps']}-step SDE"
    tokens = s["B"] * s["L"]
    median = measure(benchmark, run, device, rounds=5, impl=impl)
    benchmark.extra_info["tokens/s"] = tokens / median
    print(f"\n{benchmark.group} [{impl}]: {tokens / median:,.0f} tokens/s")


# (label, steps, sampler): the teacher's default run and students of the curriculum
STUDENTS = {"cuda": [("teacher", 32, "sde"), ("student", 8, "ode"), ("student", 4, "ode"), ("student", 1, "ode")],
            "cpu": [("teacher", 8, "sde"), ("student", 2, "ode"), ("student", 1, "ode")]}


@pytest.mark.parametrize("which", range(4))
def test_student_sampling(benchmark, device, which, monkeypatch):
    runs = STUDENTS["cuda" if device == "cuda" else "cpu"]
    if which >= len(runs):
        pytest.skip("fewer student rows on this device")
    label, steps, sampler = runs[which]
    s = GPU if device == "cuda" else CPU_SIZE
    torch.manual_seed(0)
    model = create_model(s["preset"], latent_dim=s["C"], vocab_size=s["V"], max_length=s["L"]).to(device).eval()
    monkeypatch.setenv("ELF_FAST_BACKEND", "kernel")
    if device == "cuda":
        model.set_block_dtype(torch.bfloat16)
    if label == "teacher":
        cfg = SamplerConfig(steps=steps, sampler="sde", gamma=1.5, w_sc=3.0)
    else:
        cfg = SamplerConfig(steps=steps, sampler="ode", w_sc=2.5, grid="uniform")

    def run():
        z = sample_latents(model, s["B"], s["L"], cfg, seed=0, device=device)
        return decode(model, z, cfg.w_sc)

    benchmark.group = f"sampling {s['preset']} {device} B={s['B']} L={s['L']}: teacher vs distilled students"
    tokens = s["B"] * s["L"]
    median = measure(benchmark, run, device, rounds=5, impl=f"{label} {steps}-step {sampler.upper()}",
                     baseline=label == "teacher")
    benchmark.extra_info["tokens/s"] = tokens / median
    print(f"\n{benchmark.group} [{label} {steps}-step]: {tokens / median:,.0f} tokens/s")

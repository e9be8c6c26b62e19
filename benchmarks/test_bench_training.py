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
import os

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


# ------------------------------------------------------------------------------------------------
# The built-in config (training/configs/debian_en_builtin.yaml: ELF-XS, the bundled MiniLM encoder,
# 64 x 64 tokens, Muon), one optimiser step at a time, both ways in one process:
#   plain:     the reference way with every elf_fast op on its pure-PyTorch reference
#              (ELF_FAST_BACKEND=reference around its steps: autograd of the references, the (N, V)
#              logits of the decode head materialised): what the step costs without elf_fast;
#   reference: the frozen encoder runs on every micro-batch, Muon is torch.optim.Muon (bf16
#              Newton-Schulz, emulated on CPUs without AVX512-BF16 / AMX) and AdamW PyTorch's
#              default (optim.adamw=default: a loop over the tensors on the CPU);
#   kernel:    train.latent_cache (float32, bit-identical latents, read from the memory-mapped
#              cache), optim.muon_ns_dtype=auto (float32 Newton-Schulz where bf16 is emulated) and
#              optim.adamw=auto (fused AdamW on the CPU; equal to the default to rounding);
#   kernel_bf16 (only on CPUs with native bf16, AVX512-BF16 / AMX): the kernel way plus
#              train.cpu_bf16 (bf16 autocast of the blocks, and bf16 GEMMs in the decode head's
#              linear cross-entropy, attention in float32 under grad: what the built-in runs train
#              with since debian_en_builtin_v2.yaml); not exact, a
#              different run's numerics (bf16 GEMMs, fp32 master weights).
# The corpus: data/debian/en (python -m elf_fast.data prepare-debian --out data/debian) when present,
# else the committed 300-description fixture; the first BUILTIN_ROWS packed rows of it. The cache is
# built before the timing (its cost, one encoder pass over those rows, is in extra_info).
BUILTIN_ROWS = 256


def _builtin_setup(tmp_dir, impl):
    import os
    import sys
    import time
    from pathlib import Path
    from unittest import mock

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "training"))
    import train as T
    from elf_fast.train_config import load_config

    data = os.environ.get("ELF_FAST_BENCH_DEBIAN", str(root / "data" / "debian" / "en"))
    over = [f"data.train={data}"] if os.path.isdir(data) else [
        f"data.train={root / 'tests' / 'fixtures' / 'debian' / 'en' / 'train.jsonl'}"]
    cached = impl.startswith("kernel")
    plain = impl == "plain"
    over += [f"train.out_dir={tmp_dir}", "optim.muon_ns_dtype=" + ("auto" if cached else "bfloat16"),
             "optim.adamw=" + ("auto" if cached else "default")]
    over.append("train.latent_cache=" + ("auto" if cached else '""'))  # the config has it on
    over.append(f"train.cpu_bf16={'true' if impl == 'kernel_bf16' else 'false'}")
    cfg = load_config(str(root / "training" / "configs" / "debian_en_builtin.yaml"), over)
    d = T.Dist()
    torch.manual_seed(0)
    encoder = T.FrozenEncoder(cfg.encoder.name_or_path, mu=cfg.encoder.mu, sigma=cfg.encoder.sigma)
    data_t = T.load_tensors(cfg, encoder, cfg.data.train, cfg.data.train_split)
    data_t["ids"] = data_t["ids"][:BUILTIN_ROWS]
    build_s = 0.0
    if cached:
        t0 = time.perf_counter()
        data_t["latents"] = T.cached_latents(cfg, encoder, data_t["ids"], d, Path(tmp_dir))
        build_s = time.perf_counter() - t0
    recipe = T.elf_recipe(cfg)
    model = recipe.init_model(cfg, encoder, d.device)
    optims = T.build_optimizers(model, cfg.optim, cfg.optim.blr * cfg.train.global_batch / 256)
    micro = cfg.train.global_batch
    n = len(data_t["ids"])
    step = [0]

    def run():
        if plain:
            with mock.patch.dict(os.environ, {"ELF_FAST_BACKEND": "reference"}):
                return step_once()
        return step_once()

    def step_once():
        s = step[0]
        step[0] += 1
        batches = T.epoch_batches(n, micro, d, 0, s // max(1, n // micro))
        idx = batches[s % len(batches)]
        gen = T.make_generator(0, s, 0, d.device)
        with T._autocast(d.device, cfg.train):  # a no-op unless train.cpu_bf16 (as in the training loop)
            batch = T.make_batch(cfg, data_t, idx, encoder, d, gen)
            loss, _ = recipe.loss(model, batch, gen)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        for o in optims:
            o.step()
            o.zero_grad(set_to_none=True)
        return loss

    return run, micro * cfg.data.seq_len, build_s, n, cfg.data.train


def test_builtin_config_training(benchmark, device, tmp_path):
    """All ways in one process, steps interleaved (plain, reference, kernel[, kernel_bf16], plain, ...)
    so that a busy machine slows them alike; the table's row times one such round, extra_info has each
    way's median step and tokens/s and the ratios: against reference (elf_fast's kernels, none of the
    training features) and against plain (no elf_fast at all)."""
    if device != "cpu":
        pytest.skip("the built-in config is a CPU run")
    from elf_fast.cpu_alloc import restore_default, reuse_freed_memory

    # as training/train.py runs on the CPU (train.cpu_malloc_reuse), for every way alike
    # (ELF_FAST_BENCH_MALLOC_REUSE=0: glibc's own behaviour); glibc's initial thresholds are set
    # back afterwards, for the benchmarks that follow in this process
    malloc_reuse = os.environ.get("ELF_FAST_BENCH_MALLOC_REUSE", "1") != "0" and reuse_freed_memory()
    try:
        _builtin_rounds(benchmark, device, tmp_path, malloc_reuse)
    finally:
        if malloc_reuse:
            restore_default()


def _builtin_rounds(benchmark, device, tmp_path, malloc_reuse):
    import statistics
    import time

    from elf_fast.muon import cpu_has_native_bf16

    impls = ("plain", "reference", "kernel") + (("kernel_bf16",) if cpu_has_native_bf16() else ())
    ways = {impl: _builtin_setup(tmp_path / impl, impl) for impl in impls}
    times = {impl: [] for impl in ways}

    def one_round():
        for impl, (run, *_rest) in ways.items():
            t0 = time.perf_counter()
            run()
            times[impl].append(time.perf_counter() - t0)

    # Warm-up rounds first (ELF_FAST_BENCH_TRAIN_WARMUP, default 10), so that the timed rounds see
    # the steady state of a long run: oneDNN compiles a kernel for each new bf16 GEMM shape (a step's
    # shapes change with its self-conditioning sub-batch) and the allocator's heap grows to the step's
    # peak. Every way ran 10-20 % faster after them (2026-12-06, one thread), the ratios within noise.
    warmup = int(os.environ.get("ELF_FAST_BENCH_TRAIN_WARMUP", "10"))
    for _ in range(warmup):
        one_round()
    for v in times.values():
        v.clear()
    benchmark.group = "training step, built-in config (ELF-XS, MiniLM, 64 x 64, Muon) cpu"
    measure(benchmark, one_round, device, rounds=5, impl=" + ".join(impls) + ", interleaved")
    tokens = ways["kernel"][1]
    med = {impl: statistics.median(v[1:]) for impl, v in times.items()}  # [0]: measure's warm-up call
    info = {f"{impl}_tokens/s": tokens / m for impl, m in med.items()}
    fast = [i for i in ("kernel", "kernel_bf16") if i in med]
    for i in fast:
        info[f"{i}_vs_reference"] = med["reference"] / med[i]
        info[f"{i}_vs_plain"] = med["plain"] / med[i]
    info.update(cache_build_s=ways["kernel"][2], rows=ways["kernel"][3], corpus=ways["kernel"][4],
                cpu_native_bf16=cpu_has_native_bf16(), threads=torch.get_num_threads(), malloc_reuse=malloc_reuse,
                warmup_rounds=warmup)
    benchmark.extra_info.update(info)
    print(f"\n{benchmark.group}, {info['threads']} thread(s), native bf16: {info['cpu_native_bf16']}, "
          f"malloc reuse (train.cpu_malloc_reuse): {malloc_reuse}, {warmup} warm-up rounds: plain "
          f"{info['plain_tokens/s']:,.0f} tokens/s, reference {info['reference_tokens/s']:,.0f}; "
          + "; ".join(f"{i} {info[i + '_tokens/s']:,.0f} ({info[i + '_vs_reference']:.2f}x reference, "
                      f"{info[i + '_vs_plain']:.2f}x plain)" for i in fast)
          + f" (cache build {info['cache_build_s']:.1f} s for {info['rows']} rows)")

"""The built-in config's training step (benchmarks/test_bench_training.py -k builtin: ELF-XS, MiniLM,
64 x 64 tokens, Muon), its ways interleaved step by step in one process, plus one more way:
``kernel_bf16_fp32head`` = kernel_bf16 (train.cpu_bf16) with the decode head kept float32, as
before ELF.decode_loss ran it in bf16 under CPU bf16 autocast (elf_fast.model._cpu_native_bf16
patched to False around its steps). Prints each way's median step and tokens/s.

    OMP_NUM_THREADS=1 ELF_FAST_BENCH_DEBIAN=data/debian/en python scripts/ab_train_cpu_bf16_head.py [--rounds 6]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--ways", default="reference,kernel,kernel_bf16_fp32head,kernel_bf16")
    args = ap.parse_args()
    from test_bench_training import _builtin_setup

    from elf_fast import model as model_mod
    from elf_fast.muon import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        sys.exit("needs a CPU with native bf16 (the kernel_bf16 ways)")
    tmp = Path(tempfile.mkdtemp(prefix="ab_train_bf16_head_"))
    ways, corpus = {}, None
    for way in args.ways.split(","):
        impl = "kernel_bf16" if way == "kernel_bf16_fp32head" else way
        run, tokens, _, rows, corpus = _builtin_setup(tmp / way, impl)
        ways[way] = run
    native = model_mod._cpu_native_bf16

    def step(way):
        if way == "kernel_bf16_fp32head":
            model_mod._cpu_native_bf16 = lambda: False
        try:
            t0 = time.perf_counter()
            ways[way]()
            return time.perf_counter() - t0
        finally:
            model_mod._cpu_native_bf16 = native

    times = {w: [] for w in ways}
    for r in range(args.rounds + 1):  # round 0: warm-up, not counted
        for w in ways:
            t = step(w)
            if r:
                times[w].append(t)
    print(f"torch threads {torch.get_num_threads()}, corpus {corpus} ({rows} rows), {args.rounds} rounds")
    med = {w: statistics.median(v) for w, v in times.items()}
    for w, m in med.items():
        ratio = f", {med['reference'] / m:.2f}x reference" if "reference" in med else ""
        print(f"{w:22s} median {m * 1e3:7.0f} ms (min {min(times[w]) * 1e3:.0f}): {tokens / m:,.0f} tokens/s{ratio}")


if __name__ == "__main__":
    main()

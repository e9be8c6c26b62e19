"""A/B timing of end-to-end sampling: fused kernels vs the plain-PyTorch references, alternated.

On a noisy machine (a shared VM's timings drift by 2x between short runs) timing the two
paths one after the other compares two different machines; alternating them round by round
in one process lets the drift hit both. Same sizes as the CPU row of
benchmarks/test_bench_sampling.py (ELF-T, C 64, V 4096, batch 4 x 64 tokens, 8-step SDE,
w_sc 3, random weights).

    python scripts/ab_sampling.py [--rounds 14] [--device cpu]
"""

import argparse
import os
import statistics
import time

import torch

from elf_fast.model import create_model
from elf_fast.sampling import SamplerConfig, decode, sample_latents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=14)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model("ELF-T", latent_dim=64, vocab_size=4096, max_length=64).to(args.device).eval()
    cfg = SamplerConfig(steps=8, sampler="sde", gamma=1.5, w_sc=3.0)

    def run():
        z = sample_latents(model, 4, 64, cfg, seed=0, device=args.device)
        ids = decode(model, z, cfg.w_sc)
        if args.device != "cpu":
            torch.cuda.synchronize()
        return ids

    times = {"kernel": [], "reference": []}
    for _ in range(args.rounds + 2):  # the first two rounds warm up
        for impl, ts in times.items():
            os.environ["ELF_FAST_BACKEND"] = impl
            t0 = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t0)
    med = {k: statistics.median(v[2:]) * 1e3 for k, v in times.items()}
    low = {k: min(v[2:]) * 1e3 for k, v in times.items()}
    for k in times:
        print(f"{k:9s} median {med[k]:7.1f} ms   min {low[k]:7.1f} ms")
    print(f"fused vs plain: {med['reference'] / med['kernel']:.2f}x (medians), "
          f"{low['reference'] / low['kernel']:.2f}x (minima), {torch.get_num_threads()} threads, {args.device}")


if __name__ == "__main__":
    main()

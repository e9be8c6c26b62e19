"""``python -m elf_fast.sample``: generate text with an ELF checkpoint.

With no arguments it loads the checkpoint shipped inside the package
(``elf_fast/assets/*.safetensors``, a small ELF trained on Debian's package descriptions) and
prints a few unconditional samples. A command-line shell over :class:`elf_fast.Generator`
(``elf_fast/generator.py``), which is the Python API for the same thing.

Sampler settings come from, in order: the command line; the checkpoint's recommended settings
(a ``sampler`` entry in its header, which the built-in checkpoint has); docs/method.md §5's
defaults (:data:`elf_fast.sampling.METHOD_DEFAULTS`).

Examples::

    python -m elf_fast.sample --num-samples 8 --steps 32 --sampler sde --gamma 1.5 --sc-cfg 3
    python -m elf_fast.sample --checkpoint runs/debian/latest.safetensors --out samples.jsonl
    python -m elf_fast.sample --checkpoint embedded-language-flows/ELF-B-owt-torch --length 1024  # docs/published_models.md
    python -m elf_fast.sample --checkpoint outputs/run/checkpoint_5000 --port-config train_owt_ELF-B.yml
    python -m elf_fast.sample --device cuda --num-samples 256 --compile reduce-overhead
    python -m elf_fast.sample --checkpoint ckpt/ --condition "Ein Werkzeug zum ..." --cfg 2 --sampler ode --steps 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from elf_fast.cli import add_compile_arg, add_generator_args, add_sampler_args, load_generator, sampler_from_args

def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m elf_fast.sample", description=__doc__.splitlines()[0])
    add_generator_args(ap)
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=0, help="default: min(num-samples, 32)")
    ap.add_argument("--length", type=int, default=0, help="target tokens (default: the checkpoint's, else 64)")
    add_sampler_args(ap)
    ap.add_argument("--condition", action="append", help="condition text (repeatable; conditional checkpoints)")
    ap.add_argument("--condition-file", help="one condition per line")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="transformer-block weights (default: bfloat16 on CUDA, float32 on CPU)")
    add_compile_arg(ap)
    ap.add_argument("--out", help="write one JSON line per sample here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.num_samples < 1:
        ap.error("--num-samples must be >= 1")
    if args.batch_size < 0 or args.length < 0:
        ap.error("--batch-size and --length must be >= 0")
    return args


def _conditions(args) -> list[str] | None:
    conds = list(args.condition or [])
    if args.condition_file:
        p = Path(args.condition_file)
        if not p.is_file():
            raise SystemExit(f"error: --condition-file {str(p)!r} does not exist")
        conds += [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return conds or None


def _open_out(path: str | None):
    """``--out`` opened for writing before any work, so a bad path fails at once (OSError)."""
    if path is None:
        return None
    if Path(path).is_dir():
        raise IsADirectoryError(f"--out {path!r} is a folder; name a file")
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise OSError(f"--out {path!r} cannot be written: {e.strerror}") from e


def main(argv=None) -> int:
    args = parse_args(argv)
    conditions = _conditions(args)
    out = _open_out(args.out)
    try:
        return _sample(args, conditions, out)
    finally:
        if out is not None:
            out.close()


def _sample(args, conditions, out) -> int:
    gen = load_generator(args)
    if conditions and not gen.conditional:
        raise SystemExit("error: --condition given, but this checkpoint is unconditional")
    if gen.conditional and not conditions:
        raise SystemExit("error: this checkpoint is conditional: pass --condition TEXT or --condition-file")
    if args.cfg is not None and not gen.conditional:
        raise SystemExit("error: --cfg applies to conditional checkpoints only")
    cfg = sampler_from_args(gen, args)
    length = args.length or gen.default_length

    def emit(batch):  # each batch as soon as it is decoded: an interrupted run keeps what it finished
        for rec in batch:
            if out is not None:
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            print(f"[{rec['index']}] {rec['text']}", flush=True)
        if out is not None:
            out.flush()

    start = time.perf_counter()
    try:
        records = gen.generate(None if conditions else args.num_samples, conditions=conditions, length=length,
                               batch_size=args.batch_size, seed=args.seed, sampler=cfg,
                               progress=not args.no_progress, on_batch=emit)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    elapsed = time.perf_counter() - start
    n = len(records)
    print(f"{n} samples x {length} tokens in {elapsed:.1f} s ({n * length / elapsed:.0f} tokens/s) on {gen.device}, "
          f"{cfg.steps}-step {cfg.sampler.upper()}, w_sc {cfg.w_sc}" + (f", cfg {cfg.cfg}" if conditions else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    from elf_fast.cli import run

    sys.exit(run(main))

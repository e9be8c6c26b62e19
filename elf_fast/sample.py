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

import json
import sys
import time
from pathlib import Path

from elf_fast import validate
from elf_fast.cli import (ArgumentParser, add_compile_arg, announce_recommended, add_generator_args, add_sampler_args, load_generator,
                          resolve_device_arg, sampler_from_args)

#: The longest condition text taken (characters); longer ones are refused, not silently cut
#: (the tokenizer then keeps at most the checkpoint's condition length of tokens of each).
MAX_CONDITION_CHARS = 20_000


def parse_args(argv=None):
    ap = ArgumentParser(prog="python -m elf_fast.sample", description=__doc__.splitlines()[0])
    add_generator_args(ap)
    ap.add_argument("--num-samples", type=validate.arg_setting("num_samples"), default=None,
                    help="unconditional checkpoints (default 4)")
    ap.add_argument("--batch-size", type=validate.arg_setting("batch_size"), default=0,
                    help=f"default: min(num-samples, 32); at most {validate.LIMITS['batch_size'][1]}")
    ap.add_argument("--length", type=validate.arg_setting("length"), default=0,
                    help="target tokens (default: the checkpoint's, else 64)")
    add_sampler_args(ap)
    ap.add_argument("--condition", action="append", help="condition text (repeatable; conditional checkpoints)")
    ap.add_argument("--condition-file", help="one condition per line")
    ap.add_argument("--seed", type=validate.arg_setting("seed"), default=0, help="an integer in [0, 2**63)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="transformer-block weights (default: bfloat16 on CUDA, float32 on CPU)")
    add_compile_arg(ap)
    ap.add_argument("--out", help="write one JSON line per sample here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.checkpoint is not None and not args.checkpoint.strip():
        ap.error("--checkpoint is empty (leave it out for the built-in model)")
    if args.out is not None and not args.out.strip():
        ap.error("--out is empty")
    return args


def _conditions(args) -> list[str] | None:
    conds = list(args.condition or [])
    if any(not c.strip() for c in conds):
        raise SystemExit("error: --condition is empty")
    if args.condition_file is not None:
        p = Path(args.condition_file)
        if p.is_dir():
            raise SystemExit(f"error: --condition-file {str(p)!r} is a folder; name a file with one condition a line")
        if not p.is_file():
            raise SystemExit(f"error: --condition-file {str(p)!r} does not exist")
        try:
            lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise SystemExit(f"error: --condition-file {str(p)!r} is not UTF-8 text") from None
        if not lines:
            raise SystemExit(f"error: --condition-file {str(p)!r} holds no condition (no non-blank line)")
        conds += lines
    for i, c in enumerate(conds):
        if len(c) > MAX_CONDITION_CHARS:
            raise SystemExit(f"error: condition {i} has {len(c)} characters; at most {MAX_CONDITION_CHARS} are taken")
    return conds or None


def _open_out(path: str | None):
    """``--out``, opened (and so emptied) only once everything else is checked: called after the
    checkpoint is loaded and the settings are accepted, so a failing command leaves an existing file
    as it was. Its writability is checked up front by :func:`elf_fast.validate.writable_file`."""
    if path is None:
        return None
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise OSError(f"--out {path!r} cannot be written: {e.strerror}") from e


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out is not None:
        validate.writable_file("--out", args.out)  # fail at once on a bad path, truncating nothing
    conditions = _conditions(args)
    resolve_device_arg(args.device)
    return _sample(args, conditions)


def _sample(args, conditions) -> int:
    gen = load_generator(args)
    if conditions and not gen.conditional:
        raise SystemExit("error: --condition given, but this checkpoint is unconditional")
    if gen.conditional and not conditions:
        raise SystemExit("error: this checkpoint is conditional: pass --condition TEXT or --condition-file")
    if gen.conditional and args.num_samples is not None:
        raise SystemExit("error: --num-samples applies to unconditional checkpoints; this one is conditional and "
                         "gives one sample per --condition")
    if args.cfg is not None and not gen.conditional:
        raise SystemExit("error: --cfg applies to conditional checkpoints only")
    cfg = sampler_from_args(gen, args, announce=False)
    length = args.length or gen.default_length
    num_samples = 4 if args.num_samples is None else args.num_samples
    try:  # every argument checked before --out is opened (and emptied)
        gen.check_generate(None if conditions else num_samples, conditions=conditions, length=length,
                           batch_size=args.batch_size, seed=args.seed, sampler=cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    announce_recommended(gen, args)
    out = _open_out(args.out)
    try:
        return _run(gen, args, conditions, num_samples, cfg, length, out)
    finally:
        if out is not None:
            out.close()


def _run(gen, args, conditions, num_samples, cfg, length, out) -> int:
    def emit(batch):  # each batch as soon as it is decoded: an interrupted run keeps what it finished
        for rec in batch:
            if out is not None:
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            print(f"[{rec['index']}] {rec['text']}", flush=True)
        if out is not None:
            out.flush()

    start = time.perf_counter()
    try:
        records = gen.generate(None if conditions else num_samples, conditions=conditions, length=length,
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

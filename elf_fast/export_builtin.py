"""``python -m elf_fast.export_builtin RUN_DIR``: ship a training run's EMA weights as the built-in model.

Takes the newest ``ckpt_<step>/ema.safetensors`` of RUN_DIR, stores it in bfloat16 (so the
file stays near 25 MB) as ``elf_fast/assets/<name>.safetensors`` — the checkpoint that
``python -m elf_fast.sample`` loads when given none — and records in its header how it was made
and, with ``--steps/--sampler/--gamma/--sc-cfg/--cfg``, the sampler settings it should be sampled with
by default (its ``sampler`` entry; the command line of ``elf_fast.sample`` still overrides them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dataclasses import replace

import torch

from elf_fast.checkpoint import load_checkpoint, save_checkpoint
from elf_fast import validate
from elf_fast.cli import ArgumentParser, add_sampler_args, given_sampler_options
from elf_fast.generator import ASSETS
from elf_fast.sampling import sampler_settings


def export(run_dir: str | Path, name: str = "elf_xs_debian_en", *, command: str = "",
           sampler: dict | None = None) -> Path:
    validate.plain_name("--name", name)
    if name.endswith(".safetensors"):
        name = name[:-len(".safetensors")]
    run_dir = Path(run_dir)
    done = sorted(p for p in run_dir.glob("ckpt_*") if (p / "ema.safetensors").is_file())
    if not done:
        raise FileNotFoundError(f"no ckpt_<step>/ema.safetensors under {str(run_dir)!r}")
    model, header = load_checkpoint(done[-1] / "ema.safetensors")
    if sampler:
        sampler_settings(header.conditional, sampler)  # fail here, not when a user samples
    step = int(done[-1].name.split("_")[1])
    metrics = run_dir / "metrics.jsonl"
    try:
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        last = json.loads(lines[-1]) if lines else {}
    except ValueError:  # a line cut off by a kill: the header records nothing from it
        last = {}
    last = last if isinstance(last, dict) else {}
    built_in = {"source": str(done[-1]), "step": step, "command": command,
                "last_logged": {k: last[k] for k in ("step", "loss", "mse", "ce") if k in last}}
    start = header.extra.get("init_from")  # a run started from another model's weights (train.init_from)
    if isinstance(start, dict) and isinstance(start.get("from_step"), int):
        built_in["total_steps"] = start["from_step"] + step  # the steps of every run in the chain
    header = replace(header, preset=header.preset or "ELF-XS", extra={**header.extra, "built_in": built_in},
                     sampler=dict(sampler) if sampler else header.sampler)
    # the new checkpoint is complete (written to a temporary file and renamed) before the old one goes
    path = save_checkpoint(ASSETS / f"{name}.safetensors", model, header, dtype=torch.bfloat16)
    for old in ASSETS.glob("*.safetensors"):
        if old.name != path.name:
            old.unlink()  # exactly one built-in checkpoint
    return path


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m elf_fast.export_builtin", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--name", default="elf_xs_debian_en")
    ap.add_argument("--command", default="python training/train.py --config training/configs/debian_en_builtin.yaml",
                    help="the command that trained the run, recorded in the header")
    add_sampler_args(ap.add_argument_group(
        "recommended sampler", "recorded in the header only when given (the defaults named are elf_fast.sample's "
                               "when a checkpoint recommends nothing)"))
    args = ap.parse_args(argv)
    try:
        path = export(args.run_dir, args.name, command=args.command, sampler=given_sampler_options(args))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    from elf_fast.cli import run

    sys.exit(run(main))

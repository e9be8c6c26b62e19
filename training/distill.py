"""Distil a trained ELF into few-step students (progressive distillation, docs/method.md §9).

One round (a student that samples in 8 steps, from a teacher integrated with 8 Euler sub-steps
per student span)::

    python training/distill.py --config training/configs/test_tiny.yaml --teacher runs/elf/ckpt_00005000 \\
        --rounds 8 --substeps 8 --override train.max_steps=2000 --override train.out_dir=runs/distill

The curriculum of the method (students of 16, 8, 4, 2, 1 steps; teacher sub-steps 4 .. 64), each
round ``train.max_steps`` long and starting from the previous round's student::

    torchrun --nproc_per_node=8 training/distill.py --config training/configs/distill_elf_b_owt.yaml \\
        --teacher CKPT --rounds 16,8,4,2,1

The teacher (an elf_fast checkpoint or the official port's, EMA weights) is the same, frozen model
in every round; the first student starts from ``--student-init`` (default: the teacher). The
config is a training config (``training/train.py``): its data, optimiser and train sections apply
(``model`` is the teacher's architecture, ``encoder`` the teacher's); ``objective`` keys shared
with the distillation objective (decoder_prob, p_mean, p_std, sc_prob, dec_noise_scale, ...)
carry over. Round k writes ``<train.out_dir>/round<k>_<steps>steps/ckpt_<step>/`` with
everything training has (DDP, Muon/AdamW, EMA, atomic checkpoints, exact resume); a killed
curriculum started again resumes in the round it stopped in. Each student's header recommends
its own step count and a sampler that matches where it was trained
(:func:`elf_fast.distillation.student_sampler`: ODE on the logit-normal grid, or, with
``--student-schedule grid``, on the uniform grid; cfg 1 for conditional students; not the port's
few-step SDE, which collapsed the entropy on text: docs/distill_study.md),
so ``python -m elf_fast.sample --checkpoint <round folder>`` samples it in that many steps.

The reference port's recipe for ELF-B on OpenWebText (one epoch per round, its warm-up, batch,
lr and curriculum) is ``training/configs/distill_elf_b_owt.yaml``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from dataclasses import replace
from pathlib import Path

import torch

from elf_fast import validate
from elf_fast.checkpoint import CheckpointHeader, EncoderInfo, load_checkpoint
from elf_fast.cli import ArgumentParser
from elf_fast.distillation import (CURRICULUM, INTEGRATORS, STUDENT_SCHEDULES, DistillConfig, distill_loss,
                                   student_sampler)
from elf_fast.train_config import Config, load_config

# training/train.py, the loop: this script's folder is on sys.path when it runs (python / torchrun)
from train import Recipe, find_resume, run_training

# the one objective key (training config) that DistillConfig names differently; every other key
# that is also a DistillConfig field means the same in both
_RENAMED = {"sc_prob": "self_cond_prob"}
_DISTILL_FIELDS = ({f.name for f in dataclasses.fields(DistillConfig)}
                   - {"student_steps", "teacher_substeps", "integrator", "student_schedule"})


def round_configs(rounds: list[int], substeps: list[int] | None, objective: dict, integrator: str,
                  student_schedule: str = "logit_normal") -> list[DistillConfig]:
    """One DistillConfig per round: student steps ``rounds``, teacher sub-steps ``substeps`` (default:
    the method's curriculum for those step counts, else 64 / steps)."""
    table = dict(CURRICULUM)
    if substeps is None:
        substeps = [table.get(k, max(1, 64 // k)) for k in rounds]
    if len(substeps) != len(rounds):
        raise ValueError(f"--substeps gives {len(substeps)} values for {len(rounds)} rounds")
    shared = {_RENAMED.get(k, k): v for k, v in objective.items() if _RENAMED.get(k, k) in _DISTILL_FIELDS}
    return [DistillConfig(student_steps=k, teacher_substeps=n, integrator=integrator, student_schedule=student_schedule,
                          **shared)
            for k, n in zip(rounds, substeps)]


def distill_recipe(teacher_path: str, init_path: str, rc: DistillConfig, teacher_header: CheckpointHeader,
                   round_index: int) -> Recipe:
    """Training's loop with the distillation objective: the student starts from ``init_path``; the
    frozen teacher (``teacher_path``, loaded on the run's device) supplies the targets."""
    teacher: dict = {}

    def init_model(cfg: Config, encoder, device: torch.device):
        teacher["model"], _ = load_checkpoint(teacher_path, device=device)
        teacher["model"].requires_grad_(False)
        student, _ = load_checkpoint(init_path, device=device)
        if student.config != teacher["model"].config:
            raise ValueError(f"the student {init_path!r} ({student.config}) is not the teacher's architecture "
                             f"({teacher['model'].config})")
        if cfg.data.length > student.config.max_length:
            raise ValueError(f"data length {cfg.data.length} exceeds the teacher's max_length "
                             f"{student.config.max_length}")
        return student.train()

    def header(cfg: Config, encoder) -> CheckpointHeader:
        extra = {**teacher_header.extra, "train_config": dataclasses.asdict(cfg),
                 "distill": {"round": round_index, "teacher": str(teacher_path), "student_init": str(init_path),
                             **rc.to_dict()}}
        sampler = student_sampler(rc.student_steps, conditional=teacher_header.conditional,
                                  schedule=rc.student_schedule)
        return replace(teacher_header, sampler=sampler, extra=extra)

    def loss(net, batch: dict, gen: torch.Generator):
        return distill_loss(net, teacher["model"], batch["x"], batch["targets"], batch["loss_mask"],
                            cond_mask=batch["cond_mask"], cfg=rc, generator=gen)

    return Recipe(init_model, header, loss)


def _ints(text: str) -> list[int]:
    """Comma-separated step counts, each in [1, the sampler's step limit] (elf_fast.validate.LIMITS):
    a student must stay samplable, a teacher's sub-steps finite in number."""
    high = validate.LIMITS["steps"][1]
    try:
        values = [validate.integer("value", int(v, 10), 1, high) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers in [1, {high}], got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers in [1, {high}], got {text!r}")
    return values


def parse_args(argv=None):
    ap = ArgumentParser(prog="training/distill.py", description=__doc__.splitlines()[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--config", help="a training config (YAML; data, optim, train sections)")
    ap.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--teacher", required=True, help="the trained model: a checkpoint file or folder (EMA weights)")
    ap.add_argument("--student-init", help="the first round's student (default: the teacher)")
    ap.add_argument("--rounds", type=_ints, default=[k for k, _ in CURRICULUM],
                    help="student step counts, one round each (default 16,8,4,2,1)")
    ap.add_argument("--substeps", type=_ints, help="teacher Euler sub-steps per round (default 4,8,16,32,64 "
                                                   "for the default rounds; 64 / steps otherwise)")
    ap.add_argument("--integrator", choices=INTEGRATORS, default="fused",
                    help="teacher sub-steps through the fused flow_step (default; one call per time group) or "
                         "one vectorised float32 update (the same bits, fewer calls: for GPUs)")
    ap.add_argument("--student-schedule", choices=STUDENT_SCHEDULES, default="logit_normal",
                    help="where the student's steps start in training: logit_normal (default, the port's), uniform, "
                         "or grid (the k-step uniform grid's points; the header then recommends ODE steps on that grid, "
                         "else ODE on the logit-normal grid)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.override)
    _, theader = load_checkpoint(args.teacher)  # fails early on a bad teacher; weights reloaded per round
    if theader.data.task != cfg.data.task:
        raise ValueError(f"the teacher was trained for task {theader.data.task!r}, the config says {cfg.data.task!r}")
    enc: EncoderInfo = theader.encoder  # the student lives in the teacher's latent space
    cfg.encoder.name_or_path, cfg.encoder.mu, cfg.encoder.sigma = enc.name_or_path, enc.mu, enc.sigma
    rounds = round_configs(args.rounds, args.substeps, cfg.objective, args.integrator, args.student_schedule)
    out = Path(cfg.train.out_dir)
    init = args.student_init or args.teacher
    for i, rc in enumerate(rounds, 1):
        rcfg = copy.deepcopy(cfg)
        rcfg.train.out_dir = str(out / f"round{i}_{rc.student_steps}steps")
        print(f"round {i}/{len(rounds)}: a {rc.student_steps}-step student, teacher {rc.teacher_substeps} sub-steps "
              f"per span, from {init} -> {rcfg.train.out_dir}", file=sys.stderr)
        run_training(rcfg, distill_recipe(args.teacher, init, rc, theader, i))
        newest = find_resume(Path(rcfg.train.out_dir))
        if newest is None:
            raise RuntimeError(f"round {i} wrote no checkpoint under {rcfg.train.out_dir}")
        init = str(newest / "ema.safetensors")  # the next round starts from this student (EMA weights)
    return 0


if __name__ == "__main__":
    from elf_fast.cli import run

    sys.exit(run(main))

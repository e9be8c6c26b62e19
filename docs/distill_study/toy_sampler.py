"""A few-minute toy comparison of where a few-step student is trained and how it is sampled.

Not text: a tiny ELF-T teacher (latent 16, 12 positions) trained on a toy data set (P prototype
sequences + 0.1 Gaussian noise) until its flow converges, then two k-step students distilled from
it for the same number of steps and batches (docs/method.md §9, ``distill_loss``), differing only
in where t_s lies: ``logit_normal`` (the port's; u (1 - s)) and ``grid`` (the uniform grid's
starts i / k). Each is sampled

* on the uniform grid with ODE steps (elf_fast's old recommendation for every student),
* on the logit-normal grid with SDE steps, gamma 1.5 (the port's few-step setting),

over many seeds (the logit-normal grid is drawn per seed), and scored by the mean squared
distance of each sample to its nearest prototype per element (lower is better; the data's own
noise is 0.01) and by the entropy of the prototype assignments (log P at full coverage). The
teacher at k and 64 steps is the reference. w_sc is 1 throughout (the toy teacher is trained at
w_sc 1 only). Run from the repository root:

    PYTHONPATH=$PWD python docs/distill_study/toy_sampler.py --prototypes 4 --teacher-steps 600 \
        --distill-steps 60 --substeps 8 --seeds 8 --samples 32

(12 min on the study's shared 2-core CPU). It prints one Markdown table; docs/distill_study.md
quotes it with the machine and time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from elf_fast.distillation import DistillConfig, distill_loss
from elf_fast.model import create_model
from elf_fast.objective import ObjectiveConfig, elf_loss, make_generator
from elf_fast.sampling import SamplerConfig, sample_latents

L, C, V = 12, 16, 41


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="the students' step count k")
    ap.add_argument("--prototypes", type=int, default=8)
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--distill-steps", type=int, default=150)
    ap.add_argument("--substeps", type=int, default=16, help="teacher Euler sub-steps per student span")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=16, help="sampling seeds (one logit-normal grid each)")
    ap.add_argument("--samples", type=int, default=32, help="samples per seed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    protos = torch.randn(args.prototypes, L, C, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(args.batch, L, dtype=torch.long)
    loss_mask = torch.ones(args.batch, L, dtype=torch.bool)

    def data(i):
        g = torch.Generator().manual_seed(1000 + i)
        idx = torch.randint(0, args.prototypes, (args.batch,), generator=g)
        return protos[idx] + 0.1 * torch.randn(args.batch, L, C, generator=g)

    torch.manual_seed(0)
    teacher = create_model("ELF-T", latent_dim=C, vocab_size=V, max_length=L)
    opt = torch.optim.AdamW(teacher.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)
    obj = ObjectiveConfig(decoder_prob=0.0, w_sc_a=2.0, w_sc_b=2.0)  # w_sc = 1
    for i in range(args.teacher_steps):
        loss, _ = elf_loss(teacher, data(i), targets, loss_mask, cfg=obj, generator=make_generator(1, i))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
        opt.step()
    teacher.requires_grad_(False).eval()
    print(f"teacher trained: {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    students = {}
    for schedule in ("logit_normal", "grid"):
        student = create_model("ELF-T", latent_dim=C, vocab_size=V, max_length=L)
        student.load_state_dict(teacher.state_dict())
        student.requires_grad_(True)
        cfg = DistillConfig(student_steps=args.steps, teacher_substeps=args.substeps, decoder_prob=0.0,
                            w_sc_a=2.0, w_sc_b=2.0, integrator="vectorised", student_schedule=schedule)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
        for i in range(args.distill_steps):  # the same batches and seeds for both students
            loss, _ = distill_loss(student, teacher, data(5000 + i), targets, loss_mask, cfg=cfg,
                                   generator=make_generator(2, i))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
        students[schedule] = student.requires_grad_(False).eval()
        print(f"student ({schedule}) distilled: {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    def score(model, sampler_cfg):
        d2, assign = [], []
        for seed in range(args.seeds):
            z = sample_latents(model, args.samples, L, sampler_cfg, seed=10_000 + seed)
            dist = (z[:, None] - protos[None]).pow(2).mean((-1, -2))  # (n, P) per element
            m, a = dist.min(1)
            d2.append(m)
            assign.append(a)
        d2, assign = torch.cat(d2), torch.cat(assign)
        p = torch.bincount(assign, minlength=args.prototypes).float() / assign.numel()
        ent = -(p[p > 0] * p[p > 0].log()).sum().item()
        return d2.mean().item(), (d2.std() / math.sqrt(d2.numel())).item(), d2.median().item(), ent

    k = args.steps
    ode_u = SamplerConfig(steps=k, sampler="ode", grid="uniform", w_sc=1.0)
    sde_ln = SamplerConfig(steps=k, sampler="sde", gamma=1.5, grid="logit_normal", w_sc=1.0)
    ode_ln = SamplerConfig(steps=k, sampler="ode", grid="logit_normal", w_sc=1.0)
    rows = [("teacher", "64-step SDE, logit-normal grid, gamma 1.5",
             SamplerConfig(steps=64, sampler="sde", gamma=1.5, grid="logit_normal", w_sc=1.0), teacher),
            ("teacher", "64-step ODE, uniform grid", SamplerConfig(steps=64, sampler="ode", grid="uniform", w_sc=1.0),
             teacher)]
    for name, model in (("teacher", teacher), ("student, t_s logit-normal", students["logit_normal"]),
                        ("student, t_s on the grid", students["grid"])):
        rows += [(name, f"{k}-step ODE, uniform grid", ode_u, model),
                 (name, f"{k}-step SDE, logit-normal grid, gamma 1.5", sde_ln, model),
                 (name, f"{k}-step ODE, logit-normal grid", ode_ln, model)]
    n = args.seeds * args.samples
    print(f"| model | sampler | MSE to nearest prototype: mean ± s.e. / median | assignment entropy (max "
          f"{math.log(args.prototypes):.3f}) |")
    print("|---|---|---:|---:|")
    for name, label, sc, model in rows:
        mean, se, med, ent = score(model, sc)
        print(f"| {name} | {label} | {mean:.4f} ± {se:.4f} / {med:.4f} | {ent:.3f} |")
    print(f"\n{n} samples per row ({args.seeds} seeds x {args.samples}); {args.prototypes} prototypes; teacher "
          f"{args.teacher_steps} steps, students {args.distill_steps} steps at batch {args.batch}, "
          f"{args.substeps} teacher sub-steps per span; {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()

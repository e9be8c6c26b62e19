"""training/distill.py: rounds of progressive distillation from the built-in model, run as a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elf_fast.generator import builtin_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
TEACHER = builtin_checkpoint()

pytestmark = pytest.mark.skipif(TEACHER is None, reason="no built-in checkpoint in elf_fast/assets")


def _distill(out_dir, *args, check=True):
    cmd = [sys.executable, str(ROOT / "training" / "distill.py"), "--config", str(ROOT / "training/configs/test_tiny.yaml"),
           "--teacher", str(TEACHER), "--override", f"train.out_dir={out_dir}", "--override", "train.max_steps=2",
           *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, check=check, timeout=600)


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_curriculum_rounds_resume_at_the_round_they_stopped_in_and_students_sample_at_their_steps(tmp_path):
    full = tmp_path / "full"
    _distill(full, "--rounds", "4,2", "--substeps", "2,4")
    r1, r2 = full / "round1_4steps", full / "round2_2steps"
    assert (r1 / "ckpt_00000002").is_dir() and (r2 / "ckpt_00000002").is_dir()
    assert all(v > 0 for v in _losses(r1) + _losses(r2))
    from elf_fast.checkpoint import load_checkpoint

    _, header = load_checkpoint(r2)
    # logit-normal t_s (the default): ODE on the logit-normal grid (docs/distill_study.md, "Sampler on text")
    assert header.sampler == {"steps": 2, "sampler": "ode", "grid": "logit_normal", "w_sc": 2.5}
    distill = header.extra["distill"]
    assert distill["student_steps"] == 2 and distill["student_schedule"] == "logit_normal"
    assert header.extra["distill"]["student_init"] == str(r1 / "ckpt_00000002" / "ema.safetensors")
    assert header.extra["distill"]["teacher"] == str(TEACHER)  # the original model in every round

    # stopped after round 1 (as if killed between rounds), then the same command again: round 1 is
    # not redone, round 2 gives the losses of the uninterrupted curriculum
    part = tmp_path / "part"
    _distill(part, "--rounds", "4", "--substeps", "2")
    r = _distill(part, "--rounds", "4,2", "--substeps", "2,4")
    assert _losses(part / "round1_4steps") == _losses(r1)  # one log line per step: nothing retrained
    assert _losses(part / "round2_2steps") == _losses(r2)
    assert "resumed from" in r.stderr

    # the student recommends its own step count to the sampler
    s = subprocess.run([sys.executable, "-m", "elf_fast.sample", "--checkpoint", str(r2), "--num-samples", "1",
                        "--no-progress", "--length", "16"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert s.returncode == 0, s.stderr[-2000:]
    assert "2-step ODE, w_sc 2.5" in s.stderr


def test_bad_distillation_input_is_a_one_line_error(tmp_path):
    r = _distill(tmp_path / "o", "--rounds", "4", "--override", "data.task=translation", "--override",
                 "data.train=tests/fixtures/debian/de-en/train.jsonl", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "teacher was trained for task 'unconditional'" in r.stderr.strip().splitlines()[-1]


def test_a_round_stopped_midway_resumes_to_the_uninterrupted_losses_and_weights(tmp_path):
    # the same round run through (4 steps) and stopped at its step-2 checkpoint, then started again;
    # t_s on the 4-step grid (--student-schedule grid), so the student recommends that grid
    full, part = tmp_path / "full", tmp_path / "part"
    grid = ("--rounds", "4", "--substeps", "2", "--student-schedule", "grid")
    _distill(full, *grid, "--override", "train.max_steps=4")
    _distill(part, *grid)  # max_steps 2: ends at the step-2 checkpoint
    r = _distill(part, *grid, "--override", "train.max_steps=4")
    assert "resumed from" in r.stderr and "at step 2" in r.stderr
    a, b = full / "round1_4steps", part / "round1_4steps"
    assert _losses(a) == _losses(b) and len(_losses(a)) == 4
    from elf_fast.checkpoint import load_checkpoint, read_state

    _, header = load_checkpoint(a)
    assert header.sampler == {"steps": 4, "sampler": "ode", "grid": "uniform", "w_sc": 2.5}
    assert header.extra["distill"]["student_schedule"] == "grid"

    for name in ("model.safetensors", "ema.safetensors"):
        sa, sb = read_state(a / "ckpt_00000004" / name)[0], read_state(b / "ckpt_00000004" / name)[0]
        assert all(sa[k].equal(sb[k]) for k in sa), name


def test_the_port_recipe_config_reads_as_the_ports_distillation():
    # training/configs/distill_elf_b_owt.yaml: distill_curriculum_ELF-B.yml + progressive_distillation.sh
    sys.path.insert(0, str(ROOT / "training"))
    try:
        from distill import parse_args, round_configs
    finally:
        sys.path.remove(str(ROOT / "training"))
    from elf_fast.distillation import CURRICULUM
    from elf_fast.train_config import load_config

    cfg = load_config(str(ROOT / "training/configs/distill_elf_b_owt.yaml"), [])
    o, t = cfg.optim, cfg.train
    assert (o.name, o.blr, o.weight_decay, o.ema_decay, t.global_batch, t.epochs, t.max_steps) == \
        ("muon", 1e-3, 0.0, 0.9999, 512, 1, 0)
    assert o.warmup_steps == 1720  # warmup_epochs 0.1 of a ~17.2 k-step epoch
    assert (cfg.model.preset, cfg.data.seq_len) == ("ELF-B", 1024)
    args = parse_args(["--config", "c", "--teacher", "t"])  # the default rounds: the script's curriculum
    rounds = round_configs(args.rounds, args.substeps, cfg.objective, args.integrator, args.student_schedule)
    assert [(r.student_steps, r.teacher_substeps) for r in rounds] == list(CURRICULUM)
    for r in rounds:
        assert (r.student_schedule, r.decoder_prob, r.self_cond_prob, r.dec_noise_scale, r.w_sc_a, r.w_sc_b) == \
            ("logit_normal", 0.2, 0.5, 5.0, 1.5, 6.0)
        assert (r.p_mean, r.p_std, r.sigma_n, r.t_eps) == (-1.5, 0.8, 2.0, 0.05)

"""training/train.py end to end on the committed Debian fixtures (CPU, a few steps each)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "training" / "train.py"
CONFIG = ROOT / "training" / "configs" / "test_tiny.yaml"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _run(args, out_dir, check=True):
    cmd = [sys.executable, str(TRAIN), "--config", str(CONFIG), "--override", f"train.out_dir={out_dir}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, check=check, timeout=600)


def _losses(out_dir, key="loss"):
    recs = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in recs}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_loss_goes_down_and_checkpoints_are_self_describing(tmp_path):
    _run(["--override", "train.max_steps=16", "--override", "train.log_every=4", "--override",
          "train.ckpt_every=4", "--override", "train.eval_every=8", "--override", "train.sample_steps=2",
          "--override", "train.num_samples=2"], tmp_path)
    evals = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [8, 16]
    assert all(e["val_loss"] > 0 and len(e["samples"]) == 2 and isinstance(e["samples"][0], str) for e in evals)
    # the total mixes CE (decode rows, ~20 % of examples, drawn per batch) and velocity MSE, so it
    # jumps with the draw; each part must fall from the first logged interval to the last
    mse, ce = _losses(tmp_path, "mse"), _losses(tmp_path, "ce")
    assert sorted(mse) == [4, 8, 12, 16]
    assert mse[16] < mse[4] and ce[16] < 0.8 * ce[4]
    ckpts = sorted(p.name for p in tmp_path.glob("ckpt_*"))
    assert ckpts == ["ckpt_00000012", "ckpt_00000016"]  # keep_last = 2
    from elf_fast.checkpoint import load_checkpoint, umask_mode

    assert (tmp_path / "ckpt_00000016").stat().st_mode & 0o777 == umask_mode(0o777)  # not mkdtemp's 0700

    model, header = load_checkpoint(tmp_path / "ckpt_00000016" / "ema.safetensors")
    assert header.preset == "ELF-T" and header.data.seq_len == 32 and header.version == 2
    assert model.config.latent_dim == 384 and model.config.vocab_size == 30522


def test_kill_and_resume_gives_the_same_losses(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    _run([], full)
    crashed = _run(["--override", "train.kill_at_step=3"], broken, check=False)
    assert crashed.returncode == 3  # died after step 3; its newest checkpoint is step 2
    assert sorted(p.name for p in broken.glob("ckpt_*")) == ["ckpt_00000002"]
    resumed = _run([], broken)
    assert "resumed from" in resumed.stderr
    want, got = _losses(full), _losses(broken)
    for step in (4, 6):
        assert got[step] == want[step], (step, got[step], want[step])


def _torchrun(out_dir, *args, check=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(TRAIN), "--config", str(CONFIG), "--override", f"train.out_dir={out_dir}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, check=check, timeout=600)


def test_two_process_gloo_run_and_exact_resume(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    _torchrun(full)
    losses = _losses(full)
    assert sorted(losses) == [2, 4, 6] and all(v == v for v in losses.values())
    assert (full / "ckpt_00000006" / "state.pt").is_file()
    # both ranks die after step 3 (newest checkpoint: step 2); a new torchrun resumes from it and
    # logs exactly the uninterrupted run's losses
    crashed = _torchrun(broken, "--override", "train.kill_at_step=3", check=False)
    assert crashed.returncode != 0
    assert sorted(p.name for p in broken.glob("ckpt_*")) == ["ckpt_00000002"]
    resumed = _torchrun(broken)
    assert "resumed from" in resumed.stderr
    got = _losses(broken)
    for step in (4, 6):
        assert got[step] == losses[step], (step, got[step], losses[step])


def test_bad_configs_fail_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"train": "x.jsonl", "tsk": "pairs"}}))
    r = subprocess.run([sys.executable, str(TRAIN), "--config", str(bad)], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "unknown config key(s) in data: ['tsk']" in r.stderr
    r = _run(["--override", "data.train=/nonexistent/file.jsonl", "--no-resume"], tmp_path, check=False)
    assert r.returncode != 0 and "/nonexistent/file.jsonl" in r.stderr
    r = _run(["--override", "train.global_batch=7", "--override", "train.micro_batch=2"], tmp_path, check=False)
    assert r.returncode != 0 and "not a multiple" in r.stderr


def test_config_loading_rules():
    sys.path.insert(0, str(ROOT / "training"))
    try:
        import train
    finally:
        sys.path.pop(0)
    cfg = train.load_config(str(CONFIG), ["optim.blr=0.5", "objective.decoder_prob=0.3"])
    assert cfg.optim.blr == 0.5 and cfg.objective["decoder_prob"] == 0.3
    with pytest.raises(ValueError, match="section.key=value"):
        train.load_config(str(CONFIG), ["blr=1"])
    with pytest.raises(ValueError, match="unknown config section"):
        train.load_config(str(CONFIG), ["optimizer.blr=1"])
    with pytest.raises(ValueError, match="objective section"):
        train.load_config(str(CONFIG), ["objective.decoder_probability=0.3"])
    # YAML reads 2e-3 (no dot) as a string: numeric fields take it as the number it means
    cfg = train.load_config(str(CONFIG), ["optim.blr=2e-3", "objective.sigma_n=1e0", "train.max_steps=7"])
    assert cfg.optim.blr == 0.002 and cfg.objective["sigma_n"] == 1.0 and cfg.train.max_steps == 7
    assert isinstance(cfg.optim.blr, float)
    for bad, msg in [("optim.blr=fast", "optim.blr must be a number"),
                     ("train.max_steps=1.5", "train.max_steps must be an integer"),
                     ("train.cpu_bf16=3", "train.cpu_bf16 must be true or false"),
                     ("train.compile=fast", "train.compile must be"),
                     ("train.log_every=0", "train.log_every must be >= 1"),
                     ("objective.sigma_n=big", "objective.sigma_n must be a number")]:
        with pytest.raises(ValueError, match=msg):
            train.load_config(str(CONFIG), [bad])


def test_compiled_network_trains_like_the_eager_one(tmp_path):
    # train.compile: the network under torch.compile (CPU inductor here), self-conditioning
    # sub-batches of changing size included; per-step losses equal the eager run's to rounding
    steps = ["--override", "train.max_steps=3", "--override", "train.log_every=1", "--override", "train.ckpt_every=0"]
    _run(steps, tmp_path / "eager")
    r = _run([*steps, "--override", "train.compile=default"], tmp_path / "compiled")
    want, got = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert sorted(got) == [1, 2, 3]
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5), (step, r.stderr[-2000:])


def test_cpu_bf16_autocast_run(tmp_path):
    """train.cpu_bf16: encoder and blocks under CPU bf16 autocast; the fused decode-head and
    self-condition ops still run (their inner GEMMs are shielded from autocast) and it learns."""
    _run(["--override", "train.cpu_bf16=true", "--override", "train.max_steps=8", "--override",
          "train.log_every=4"], tmp_path)
    mse, ce = _losses(tmp_path, "mse"), _losses(tmp_path, "ce")
    assert sorted(mse) == [4, 8] and all(v == v for v in list(mse.values()) + list(ce.values()))
    assert ce[8] < ce[4]


def test_two_node_run_on_localhost(tmp_path):
    """torchrun's multi-node flags: two 'nodes' (one process each) meeting at 127.0.0.1."""
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1",
         "--master_addr=127.0.0.1", f"--master_port={port}", str(TRAIN), "--config", str(CONFIG),
         "--override", f"train.out_dir={tmp_path}", "--override", "train.max_steps=4"],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert sorted(_losses(tmp_path)) == [2, 4]


def test_translation_pairs_train_sample_and_evaluate(tmp_path, capsys, monkeypatch):
    """The conditional path: encode_pair with label drop in training, CFG sampling of the result, and
    evaluate reading the task training wrote (BLEU for translation, not both metrics) and the same
    default length as sampling."""
    _run(["--override", "data.task=translation", "--override",
          "data.train=tests/fixtures/debian/de-en/train.jsonl",
          "--override", "data.validation=tests/fixtures/debian/de-en/validation.jsonl", "--override",
          "data.cond_len=16", "--override", "data.tgt_len=16", "--override", "objective.dec_noise_scale=1.0",
          "--override", "train.max_steps=4", "--override", "train.eval_every=4"], tmp_path)
    assert all(v == v for v in _losses(tmp_path).values())
    ev = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[-1])
    assert ev["step"] == 4 and ev["val_loss"] > 0
    from elf_fast import evaluate, sample
    from elf_fast.checkpoint import read_state

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = tmp_path / "ckpt_00000004" / "ema.safetensors"
    assert read_state(ckpt)[1]["data"]["task"] == "translation"
    assert sample.main(["--checkpoint", str(ckpt), "--condition", "Ein Werkzeug", "--steps", "3",
                        "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "3-step ODE, w_sc 1.0, cfg 2.0" in err  # the conditional defaults of docs/method.md §5
    from elf_fast import Generator

    gen = Generator.from_checkpoint(ckpt, device="cpu")
    assert gen.task == "translation" and gen.default_length == 16  # what both commands sample: the target length
    pairs = tmp_path / "test.jsonl"
    pairs.write_text(json.dumps({"condition": "Ein Werkzeug", "target": "a tool"}) + "\n")
    out = tmp_path / "eval"
    assert evaluate.main(["run", "--checkpoint", str(ckpt), "--data", str(pairs), "--steps", "2", "--no-progress",
                          "--device", "cpu", "--out-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "translation" and report["length"] == 16
    assert "bleu" in report["metrics"] and "rouge1" not in report["metrics"]

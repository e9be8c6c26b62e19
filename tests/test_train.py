"""training/train.py end to end on the committed Debian fixtures (CPU, a few steps each).

Each step of ELF-T on a CPU takes seconds, so the uninterrupted reference runs are made once per
module (fixtures) and shared: the single-process one by the crash/resume and the compiled-training
tests, the two-process one by the two-node and the two-process crash/resume tests.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from elf_fast.train_config import load_config

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "training" / "train.py"
CONFIG = ROOT / "training" / "configs" / "test_tiny.yaml"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
STEPS = load_config(str(CONFIG), []).train.max_steps  # test_tiny: 4 steps, loss logged and checkpoint every 2


def _cmd(out_dir, *args):
    return [sys.executable, str(TRAIN), "--config", str(CONFIG), "--override", f"train.out_dir={out_dir}", *args]


def _torchrun_cmd(out_dir, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
            *_cmd(out_dir, *args)[1:]]


def _run(args, out_dir, check=True):
    return subprocess.run(_cmd(out_dir, *args), cwd=ROOT, env=ENV, capture_output=True, text=True, check=check,
                          timeout=600)


def _records(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def _losses(out_dir, key="loss"):
    return {r["step"]: r[key] for r in _records(out_dir)}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _newest_checkpoint(out_dir):
    """What train.py resumes from: the newest complete ckpt_<step> (one with its state.pt)."""
    done = [p for p in sorted(Path(out_dir).glob("ckpt_*")) if (p / "state.pt").is_file()]
    return done[-1] if done else None


def _descendants(pid):
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _crash_after_checkpoint(cmd, out_dir, step, log):
    """Run ``cmd`` in a session of its own; as soon as its checkpoint of ``step`` is complete
    (train.py renames a finished checkpoint folder into place), SIGKILL all of its processes at
    once: its process group and those of its descendants (torchrun starts every worker in a new
    session). No cleanup, no final checkpoint: a crash."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while not (Path(out_dir) / f"ckpt_{step:08d}" / "state.pt").is_file():
                assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before checkpoint {step}:\n" + \
                    Path(log).read_text()[-2000:]
                assert time.monotonic() < deadline, "no checkpoint after 600 s"
                time.sleep(0.05)
            procs = [proc.pid, *_descendants(proc.pid)]
            for pid in procs:
                try:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            assert proc.wait(timeout=60) == -signal.SIGKILL
            deadline = time.monotonic() + 60
            while any(_alive(p) for p in procs) and time.monotonic() < deadline:  # the workers are not ours to wait for
                time.sleep(0.05)
            assert not any(_alive(p) for p in procs)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _assert_exact_resume(broken, reference, start, resumed_stderr, lines_before):
    """The resumed run started from ``start``, the newest checkpoint the crash left (its message and
    its first logged step say so), logged exactly the reference run's loss at every later step, and
    ended with the reference run's weights, EMA weights and optimiser state, bit for bit."""
    k = int(start.name.split("_")[1])
    assert f"resumed from {start} at step {k}" in resumed_stderr, resumed_stderr[-2000:]
    assert k < STEPS
    resumed = _records(broken)[lines_before:]  # metrics.jsonl is appended to: the crashed run's lines come first
    assert [r["step"] for r in resumed] == list(range(k + 1, STEPS + 1))
    want = _losses(reference)
    for r in resumed:
        assert r["loss"] == want[r["step"]], (r["step"], r["loss"], want[r["step"]])
    got_ck, want_ck = broken / f"ckpt_{STEPS:08d}", reference / f"ckpt_{STEPS:08d}"
    for name in ("model.safetensors", "ema.safetensors"):
        got, ref = load_file(got_ck / name), load_file(want_ck / name)
        assert got.keys() == ref.keys() and all(torch.equal(got[k_], ref[k_]) for k_ in ref), name
    got = torch.load(got_ck / "state.pt", weights_only=True)["optimizers"]
    ref = torch.load(want_ck / "state.pt", weights_only=True)["optimizers"]
    assert len(got) == len(ref) == 2  # Muon and AdamW
    for g, r in zip(got, ref):
        assert g["state"].keys() == r["state"].keys()
        for i in r["state"]:
            for key, v in r["state"][i].items():
                assert torch.equal(torch.as_tensor(g["state"][i][key]), torch.as_tensor(v)), (i, key)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted single-process run of test_tiny (per-step losses, checkpoints every 2 steps)."""
    out = tmp_path_factory.mktemp("reference")
    _run([], out)
    return out


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One uninterrupted two-process (gloo) run of test_tiny, started as two torchrun 'nodes' of
    one process each meeting at 127.0.0.1. World size 2 either way, so a torchrun of two processes
    on one node has the same ranks, batches, draws and losses."""
    out, port = tmp_path_factory.mktemp("two_nodes"), _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1",
         "--master_addr=127.0.0.1", f"--master_port={port}", *_cmd(out)[1:]],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    return out, [p.returncode for p in procs], errs


def test_loss_goes_down_and_checkpoints_are_self_describing(tmp_path):
    stale = tmp_path / ".ckpt_00000003.x1y2"  # what a run killed while writing a checkpoint leaves
    (stale / "model.safetensors").parent.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    r = _run(["--override", "train.max_steps=16", "--override", "train.log_every=4", "--override",
          "train.ckpt_every=4", "--override", "train.eval_every=8", "--override", "train.sample_steps=2",
          "--override", "train.num_samples=2"], tmp_path)
    evals = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [8, 16]
    assert not stale.exists() and f"removed {stale}" in r.stderr
    assert f"newest checkpoint {tmp_path / 'ckpt_00000016'}" in r.stderr  # where the run's result is
    assert all(e["val_loss"] > 0 and len(e["samples"]) == 2 and isinstance(e["samples"][0], str) for e in evals)
    # the total mixes CE (decode rows, ~20 % of examples, drawn per batch) and velocity MSE, so it
    # jumps with the draw; each part must fall from the first logged interval to the last
    mse, ce = _losses(tmp_path, "mse"), _losses(tmp_path, "ce")
    assert sorted(mse) == [4, 8, 12, 16]
    assert mse[16] < mse[4] and ce[16] < 0.8 * ce[4]
    ckpts = sorted(p.name for p in tmp_path.glob("ckpt_*"))
    assert ckpts == ["ckpt_00000012", "ckpt_00000016"]  # keep_last = 2
    from elf_fast.checkpoint import HEADER_VERSION, load_checkpoint, umask_mode

    assert (tmp_path / "ckpt_00000016").stat().st_mode & 0o777 == umask_mode(0o777)  # not mkdtemp's 0700

    model, header = load_checkpoint(tmp_path / "ckpt_00000016" / "ema.safetensors")
    assert header.preset == "ELF-XS" and header.data.seq_len == 32 and header.version == HEADER_VERSION
    assert model.config.latent_dim == 384 and model.config.vocab_size == 30522


def test_kill_and_resume_gives_the_same_losses(tmp_path, reference_run):
    losses = _losses(reference_run)
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(math.isfinite(v) for v in losses.values())
    broken = tmp_path / "broken"
    _crash_after_checkpoint(_cmd(broken), broken, 2, tmp_path / "crashed.log")
    start = _newest_checkpoint(broken)
    assert start.name == "ckpt_00000002"
    lines = len(_records(broken))
    resumed = _run([], broken)
    _assert_exact_resume(broken, reference_run, start, resumed.stderr, lines)


def test_two_process_gloo_run_and_exact_resume(tmp_path, two_process_run):
    full, rcs, errs = two_process_run
    assert rcs == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    losses = _losses(full)
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(math.isfinite(v) for v in losses.values())
    assert (full / f"ckpt_{STEPS:08d}" / "state.pt").is_file()
    # torchrun and both ranks SIGKILLed once the checkpoint of step 2 is complete; a new torchrun
    # resumes from the newest complete checkpoint and continues exactly as the uninterrupted run
    broken = tmp_path / "broken"
    _crash_after_checkpoint(_torchrun_cmd(broken), broken, 2, tmp_path / "crashed.log")
    start = _newest_checkpoint(broken)
    assert start.name == "ckpt_00000002"
    lines = len(_records(broken))
    resumed = subprocess.run(_torchrun_cmd(broken), cwd=ROOT, env=ENV, capture_output=True, text=True, check=True,
                             timeout=600)
    _assert_exact_resume(broken, full, start, resumed.stderr, lines)


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
    cfg = load_config(str(CONFIG), ["optim.blr=0.5", "objective.decoder_prob=0.3"])
    assert cfg.optim.blr == 0.5 and cfg.objective["decoder_prob"] == 0.3
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(str(CONFIG), ["blr=1"])
    with pytest.raises(ValueError, match="unknown config section"):
        load_config(str(CONFIG), ["optimizer.blr=1"])
    with pytest.raises(ValueError, match="objective section"):
        load_config(str(CONFIG), ["objective.decoder_probability=0.3"])
    # YAML reads 2e-3 (no dot) as a string: numeric fields take it as the number it means
    cfg = load_config(str(CONFIG), ["optim.blr=2e-3", "objective.sigma_n=1e0", "train.max_steps=7"])
    assert cfg.optim.blr == 0.002 and cfg.objective["sigma_n"] == 1.0 and cfg.train.max_steps == 7
    assert isinstance(cfg.optim.blr, float)
    for bad, msg in [("optim.blr=fast", "optim.blr must be a number"),
                     ("train.max_steps=1.5", "train.max_steps must be an integer"),
                     ("train.cpu_bf16=3", "train.cpu_bf16 must be true or false"),
                     ("train.compile=fast", "train.compile must be"),
                     ("train.log_every=0", "train.log_every must be >= 1"),
                     ("optim.decay_steps=-1", "decay_steps must be >= 0"),
                     ("optim.adamw=apex", "optim.adamw must be"),
                     ("objective.sigma_n=big", "objective.sigma_n must be a number")]:
        with pytest.raises(ValueError, match=msg):
            load_config(str(CONFIG), [bad])


def _train_module():
    import importlib.util

    if "elf_train_script" not in sys.modules:  # registered first: train.py's dataclasses look it up
        spec = importlib.util.spec_from_file_location("elf_train_script", TRAIN)
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules["elf_train_script"]


def test_lr_schedule_warmup_constant_decay():
    lr_at = _train_module().lr_at
    # warm-up only (optim.decay_steps 0, the default): linear to base over `warmup` steps, then flat
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(10**6, 2.0, 0) == 2.0
    # a 10-step run whose last 4 steps decay: base / 5 per step, down to base / 5 at the last step
    lrs = [lr_at(s, 1.0, 2, total=10, decay=4) for s in range(10)]
    assert lrs[:6] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert lrs[6:] == pytest.approx([0.8, 0.6, 0.4, 0.2])
    # a decay longer than the run starts at once, and warm-up still caps the first steps
    assert [lr_at(s, 1.0, 2, total=3, decay=9) for s in range(3)] == pytest.approx([0.3, 0.2, 0.1])
    assert [lr_at(s, 1.0, 4, total=4, decay=2) for s in range(4)] == pytest.approx([0.25, 0.5, 2 / 3, 1 / 3])


def test_adamw_is_fused_on_the_cpu_unless_told_otherwise():
    T = _train_module()
    from elf_fast.model import create_model

    model = create_model("ELF-T", latent_dim=16, vocab_size=64, max_length=8)
    for adamw, fused in (("auto", True), ("fused", True), ("default", False)):
        cfg = load_config(str(CONFIG), [f"optim.adamw={adamw}", "optim.name=muon"])
        opts = T.build_optimizers(model, cfg.optim, 1e-3)
        adam = [o for o in opts if isinstance(o, torch.optim.AdamW)]
        assert len(adam) == 1 and bool(adam[0].defaults.get("fused")) is fused
    cfg = load_config(str(CONFIG), ["optim.name=adamw"])
    (adam,) = T.build_optimizers(model, cfg.optim, 1e-3)
    assert adam.defaults.get("fused") is True
    # and the fused step is the default one to rounding
    ref = create_model("ELF-T", latent_dim=16, vocab_size=64, max_length=8)
    ref.load_state_dict(model.state_dict())
    pairs = []
    for m, adamw in ((model, "fused"), (ref, "default")):
        o = T.adamw(m.parameters(), load_config(str(CONFIG), [f"optim.adamw={adamw}"]).optim, 1e-2)
        torch.manual_seed(0)
        for _ in range(3):
            for p in m.parameters():
                p.grad = torch.randn_like(p)
            o.step()
        pairs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    torch.testing.assert_close(pairs[0], pairs[1], rtol=1e-6, atol=1e-6)


def test_compiled_network_trains_like_the_eager_one(tmp_path, reference_run):
    # train.compile: the network under torch.compile (CPU inductor here), self-conditioning
    # sub-batches of changing size included; per-step losses equal the eager run's to rounding
    r = _run(["--override", "train.max_steps=3", "--override", "train.ckpt_every=0", "--override",
              "train.compile=default"], tmp_path)
    want, got = _losses(reference_run), _losses(tmp_path)
    assert sorted(got) == [1, 2, 3]
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5), (step, r.stderr[-2000:])


def test_latent_cache_gives_the_same_losses(tmp_path, reference_run):
    # train.latent_cache: the corpus encoded once and memory-mapped; float32 storage, so the run is
    # the uncached one (same batches, draws and losses); a second run reuses the cache file
    _run(["--override", "train.max_steps=3", "--override", "train.ckpt_every=0", "--override",
          "train.latent_cache=auto"], tmp_path)
    files = sorted((tmp_path / "latent_cache").iterdir())
    assert [f.suffix for f in files] == [".json", ".latents"]
    want, got = _losses(reference_run), _losses(tmp_path)
    assert sorted(got) == [1, 2, 3]
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step
    mtime = files[1].stat().st_mtime_ns
    _run(["--override", "train.max_steps=1", "--override", "train.ckpt_every=0", "--override",
          "train.latent_cache=auto", "--no-resume"], tmp_path)
    assert sorted((tmp_path / "latent_cache").iterdir()) == files and files[1].stat().st_mtime_ns == mtime


def test_cpu_bf16_autocast_run(tmp_path):
    """train.cpu_bf16: encoder and blocks under CPU bf16 autocast; the fused decode-head and
    self-condition ops still run (their inner GEMMs are shielded from autocast; on a CPU with
    native bf16 ELF.decode_loss hands the decode head bf16, its bf16 GEMM path) and it learns."""
    _run(["--override", "train.cpu_bf16=true", "--override", "train.max_steps=8", "--override",
          "train.log_every=4"], tmp_path)
    mse, ce = _losses(tmp_path, "mse"), _losses(tmp_path, "ce")
    assert sorted(mse) == [4, 8] and all(v == v for v in list(mse.values()) + list(ce.values()))
    assert ce[8] < ce[4]


def test_two_node_run_on_localhost(two_process_run):
    """torchrun's multi-node flags: two 'nodes' (one process each) meeting at 127.0.0.1."""
    out, rcs, errs = two_process_run
    assert rcs == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert sorted(_losses(out)) == list(range(1, STEPS + 1))


def test_translation_pairs_train_sample_and_evaluate(tmp_path, capsys, monkeypatch):
    """The conditional path: the packed layout with label drop in training, CFG sampling of the result, and
    evaluate reading the task training wrote (BLEU for translation, not both metrics) and the same
    default length as sampling."""
    _run(["--override", "data.task=translation", "--override",
          "data.train=tests/fixtures/debian/de-en/train.jsonl",
          "--override", "data.validation=tests/fixtures/debian/de-en/validation.jsonl", "--override",
          "data.max_input_length=16", "--override", "data.max_length=32", "--override", "objective.dec_noise_scale=1.0",
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


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(tmp_path, reference_run):
    """train.init_from: a new run (step 0, fresh optimiser) whose model and EMA start from another
    checkpoint's weights; the header records where it started. Another preset is refused in one line."""
    src = reference_run / f"ckpt_{STEPS:08d}"
    _run(["--override", f"train.init_from={src}", "--override", "train.max_steps=1", "--override",
          "train.ckpt_every=1"], tmp_path)
    from elf_fast.checkpoint import load_checkpoint

    ema, header = load_checkpoint(tmp_path / "ckpt_00000001" / "ema.safetensors")
    start, _ = load_checkpoint(src / "ema.safetensors")
    fresh, _ = load_checkpoint(reference_run / "ckpt_00000002" / "model.safetensors", prefer_ema=False)
    assert header.extra["init_from"]["path"] == str(src)
    # one step moves the EMA (1 - ema_decay) of the way to the trained weights: it stays next to the
    # source, far from where a run without init_from stands
    near = max((a - b).abs().max().item() for a, b in zip(ema.state_dict().values(), start.state_dict().values()))
    far = max((a - b).abs().max().item() for a, b in zip(fresh.state_dict().values(), start.state_dict().values()))
    assert near < 0.02 * far
    # resumed, the run's checkpoints still say where its weights started
    _run(["--override", f"train.init_from={src}", "--override", "train.max_steps=2", "--override",
          "train.ckpt_every=1"], tmp_path)
    _, header = load_checkpoint(tmp_path / "ckpt_00000002" / "ema.safetensors")
    assert header.extra["init_from"]["path"] == str(src)
    r = _run(["--override", f"train.init_from={src}", "--override", "model.preset=ELF-T", "--override",
              "train.max_steps=1"], tmp_path / "other", check=False)
    assert r.returncode != 0 and "train.init_from" in r.stderr and "Traceback" not in r.stderr
    r = _run(["--override", f"train.init_from={tmp_path / 'nothing'}", "--override", "train.max_steps=1"],
             tmp_path / "missing", check=False)
    assert r.returncode != 0 and "no checkpoint file there" in r.stderr and "Traceback" not in r.stderr


def test_one_document_per_example(tmp_path):
    """data.pack=false, data.first_line=true: each example is one synopsis line, EOS-padded to
    seq_len (the third built-in model's layout); the run trains, samples stop at their EOS, and a
    resume with the other layout is refused."""
    over = ["--override", "data.pack=false", "--override", "data.first_line=true", "--override", "data.seq_len=24",
            "--override", "train.max_steps=2", "--override", "train.ckpt_every=2"]
    r = _run(over, tmp_path)
    # one fixture synopsis ("Perl extension for SHA-1/224/256/384/512, ...") has 28 tokens
    assert "dropped 1 of 300 documents longer than seq_len - 1 = 23 tokens" in r.stderr
    from elf_fast.checkpoint import read_header

    header = read_header(tmp_path / "ckpt_00000002" / "ema.safetensors")
    data_cfg = header.extra["train_config"]["data"]
    assert header.data.seq_len == 24 and data_cfg["pack"] is False and data_cfg["first_line"] is True
    r = _run(["--override", "data.pack=true", "--override", "data.first_line=true", "--override", "data.seq_len=24",
              "--override", "train.max_steps=3"], tmp_path, check=False)
    assert r.returncode != 0 and "data.pack False there, True now" in r.stderr and "Traceback" not in r.stderr

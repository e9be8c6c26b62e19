"""Bad and unusual user input at every boundary (issue 24): nothing lost, nothing silently wrong.

One class of test per kind of failure: a failing command leaves existing files and checkpoints as
they were; user errors end in one ``error:`` line and exit status 2 (subprocess, as a user sees
them); non-finite or absurd settings are refused up front, and a training run whose loss becomes
non-finite stops before it writes a checkpoint; the Python API raises its documented exception
types; the fused ops agree with their references (kernel, emulated CUDA kernel) on NaN / inf.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elf_fast import cli, export_builtin, ops, sample, validate
from elf_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from elf_fast.generator import Generator
from elf_fast.model import create_model
from elf_fast.sampling import SamplerConfig, sampler_settings
from elf_fast.train_config import load_config
from conftest import requires_kernels

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
CONFIG = ROOT / "training" / "configs" / "test_tiny.yaml"
sys.path.insert(0, str(ROOT / "training"))


def _tiny(path, header=None, **model_kw):
    torch.manual_seed(0)
    model = create_model("ELF-T", **{"latent_dim": 384, "vocab_size": 30522, "max_length": 16, **model_kw})
    meta = header or {"encoder": {"name_or_path": "all-MiniLM-L6-v2", "mu": 0.0, "sigma": 0.36},
                      "data": {"task": "unconditional", "seq_len": 8}}
    return save_checkpoint(path, model, meta, preset="ELF-T")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def _with_header(src, dst, edit):
    """A copy of checkpoint ``src`` whose elf_fast header string is ``edit(header dict)``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(dst), metadata={"elf_fast": edit(json.loads(meta["elf_fast"]))})
    return dst


def _run_cli(main, argv, capsys):
    """``cli.run(main, argv)`` as ``python -m ...`` runs it: (status, stderr lines)."""
    status = cli.run(main, argv)
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ----------------------------------------------------------------- 1. nothing lost
def test_a_failing_sample_leaves_an_existing_out_file_as_it_was(tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "k.jsonl"
    out.write_text("keep\n")
    for argv in (["--checkpoint", str(tmp_path / "nope.safetensors")],       # no checkpoint
                 ["--checkpoint", str(tiny_ckpt), "--length", "999"],        # longer than the model
                 ["--checkpoint", str(tiny_ckpt), "--cfg", "2"],             # cfg on an unconditional model
                 ["--checkpoint", str(tiny_ckpt), "--device", "meta"]):
        status, err = _run_cli(sample.main, [*argv, "--out", str(out), "--no-progress"], capsys)
        assert status == 2 and len(err) == 1 and err[0].startswith("error: "), (argv, err)
        assert out.read_text() == "keep\n", argv


def test_out_into_a_folder_or_unwritable_place_fails_before_loading(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path, tmp_path / "file" / "k.jsonl"):
        status, err = _run_cli(sample.main, ["--out", str(bad), "--checkpoint", str(tmp_path / "nope")], capsys)
        assert status == 2 and len(err) == 1 and "--out" in err[0], err
    assert (tmp_path / "file").read_text() == "x"


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    assets.mkdir()
    monkeypatch.setattr(export_builtin, "ASSETS", assets)
    _tiny(assets / "builtin.safetensors")
    run = tmp_path / "run"
    _tiny(run / "ckpt_00000010" / "ema.safetensors")
    return run, assets


def test_export_builtin_keeps_the_built_in_checkpoint_when_it_fails(run_dir, monkeypatch, capsys):
    run, assets = run_dir
    before = (assets / "builtin.safetensors").read_bytes()
    for name in ("", "../x", "a/b", ".hidden", ".."):
        status, err = _run_cli(export_builtin.main, [str(run), "--name", name], capsys)
        assert status == 2 and len(err) == 1 and "--name" in err[0], (name, err)
    assert not (assets.parent / "x.safetensors").exists()

    def broken_save(*args, **kwargs):  # the new checkpoint cannot be written (disk full, ...)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_builtin, "save_checkpoint", broken_save)
    status, err = _run_cli(export_builtin.main, [str(run), "--name", "new"], capsys)
    assert status == 2 and "No space left" in err[0]
    assert sorted(p.name for p in assets.iterdir()) == ["builtin.safetensors"]
    assert (assets / "builtin.safetensors").read_bytes() == before


def test_export_builtin_replaces_the_old_checkpoint_only_once_the_new_one_is_written(run_dir, capsys):
    run, assets = run_dir
    assert export_builtin.main([str(run), "--name", "newer.safetensors"]) == 0
    assert sorted(p.name for p in assets.iterdir()) == ["newer.safetensors"]
    load_checkpoint(assets / "newer.safetensors")


def test_judge_refuses_an_unusable_out_before_training(tmp_path, capsys):
    pytest.importorskip("transformers")
    from elf_fast import judge

    existing = tmp_path / "file"
    existing.write_text("keep")
    for out in (existing, existing / "sub"):
        # --data does not exist either: the output is checked first, so no training could have run
        status, err = _run_cli(judge.main, ["--out", str(out), "--data", str(tmp_path / "nope"), "--steps", "1"], capsys)
        assert status == 2 and len(err) == 1 and "out_dir" in err[0], err
    assert existing.read_text() == "keep"


def test_evaluate_keeps_an_existing_out_dir_when_a_setting_is_bad(tmp_path, tiny_ckpt, capsys):
    from elf_fast import evaluate

    out = tmp_path / "ev"
    out.mkdir()
    (out / "samples.jsonl").write_text("keep\n")
    (out / "sweep.jsonl").write_text("keep\n")
    status, err = _run_cli(evaluate.main, ["run", "--checkpoint", str(tiny_ckpt), "--out-dir", str(out),
                                           "--length", "999", "--no-gen-ppl", "--no-progress"], capsys)
    assert status == 2 and len(err) == 1 and "max_length" in err[0], err
    status, err = _run_cli(evaluate.main, ["sweep", "--checkpoint", str(tiny_ckpt), "--out-dir", str(out), "--fresh",
                                           "--length", "999", "--no-progress"], capsys)
    assert status == 2 and len(err) == 1 and "max_length" in err[0], err
    assert (out / "samples.jsonl").read_text() == "keep\n" and (out / "sweep.jsonl").read_text() == "keep\n"


# --------------------------------------------------- 2. one line and status 2, no traceback
BAD_COMMANDS = [
    ["-m", "elf_fast.sample", "--sc-cfg", "1e300"],
    ["-m", "elf_fast.sample", "--seed", "9223372036854775808"],
    ["-m", "elf_fast.sample", "--steps", "99999999999999999999"],
    ["-m", "elf_fast.sample", "--device", "mps"],
    ["-m", "elf_fast.sample", "--checkpoint", ""],
    ["-m", "elf_fast.sample", "--no-such-option"],
    ["-m", "elf_fast", "--vocab", "99999999999999"],
    ["training/train.py", "--config", str(CONFIG), "--override", "optim.betas=5"],
    ["training/train.py", "--config", str(CONFIG), "--override", "train.out_dir="],
    ["training/distill.py", "--teacher", "nope", "--substeps", "1e20"],
    ["-m", "elf_fast.data", "prepare-debian"],
    ["-m", "elf_fast.data", "no-such-command"],
]


@pytest.mark.parametrize("argv", BAD_COMMANDS, ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_bad_command_lines_end_in_one_error_line(argv):
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip() and "cpp_extension" not in line]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)


@pytest.mark.parametrize("edit, match", [
    (lambda h: "[1]", "not a JSON object"),
    (lambda h: "{not json", "not valid JSON"),
    (lambda h: json.dumps({**h, "sampler": {"steps": 1e30}}), "steps"),
    (lambda h: json.dumps({**h, "sampler": {"w_sc": 1e300}}), "w_sc"),
    (lambda h: json.dumps({**h, "sampler": {"sampler": "euler"}}), "sampler"),
    (lambda h: json.dumps({**h, "model": {**h["model"], "num_heads": 0}}), "num_heads"),
    (lambda h: json.dumps({**h, "encoder": {**h["encoder"], "mu": float("nan")}}), "encoder.mu"),
], ids=["list", "json", "steps", "w_sc", "sampler", "num_heads", "mu"])
def test_bad_checkpoint_headers_are_checkpoint_errors(tmp_path, tiny_ckpt, capsys, edit, match):
    bad = _with_header(tiny_ckpt, tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad)
    status, err = _run_cli(sample.main, ["--checkpoint", str(bad), "--no-progress"], capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith("error: ") and match in err[0]


@pytest.mark.parametrize("override, match", [
    ("model=5", "section.key"),
    ("optim.betas=5", "optim.betas"),
    ("optim.betas=[0.9, .nan]", "finite"),
    ("train.out_dir=", "train.out_dir"),
    ("train.out_dir=''", "train.out_dir"),
    ("optim.blr=.inf", "optim.blr"),
    ("encoder.mu=.nan", "encoder.mu"),
    ("train.max_steps=99999999999999999999", "train.max_steps"),
    ("data.seq_len=0", "data.seq_len"),
])
def test_bad_config_values_are_refused(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(str(CONFIG), [override])


def test_bad_config_sections_are_refused(tmp_path):
    for text, match in (("model: 5\n", "section 'model'"), ("objective: [1]\n", "section 'objective'")):
        p = tmp_path / "c.yaml"
        p.write_text(CONFIG.read_text() + text)
        with pytest.raises(ValueError, match=match):
            load_config(str(p), [])


def test_argparse_errors_and_sampler_messages_read_like_every_other_error(tiny_ckpt, capsys):
    status, err = _run_cli(sample.main, ["--steps", "x"], capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith("error: argument --steps")
    # a command-line value is not blamed on the checkpoint's recommendation
    gen = Generator.from_checkpoint(tiny_ckpt, device="cpu")
    with pytest.raises(ValueError) as e:
        sampler_settings(False, {"sampler": "ode", "steps": 32}, steps=0)
    assert "recommend" not in str(e.value)
    with pytest.raises(ValueError, match="recommended"):
        sampler_settings(False, {"steps": 0})
    assert gen.sampler().steps == 32


# ---------------------------------------------------------------- 3. non-finite / absurd
@pytest.mark.parametrize("kw", [dict(gamma=1e308), dict(w_sc=1e38), dict(cfg=float("nan")), dict(steps=10**20),
                                dict(steps=math.inf), dict(gamma=-1.0), dict(t_eps=float("inf"))])
def test_sampler_settings_out_of_their_limits_are_refused(kw):
    with pytest.raises(ValueError):
        SamplerConfig(**kw)


def test_validate_rules():
    assert validate.integer("n", 3.0) == 3 and validate.number("x", 2) == 2.0
    for bad in (True, 2.5, "2", None, math.inf, 2**63):
        with pytest.raises(ValueError):
            validate.integer("n", bad)
    for bad in (math.nan, math.inf, -math.inf, "1", None, False, 10**400):
        with pytest.raises(ValueError):
            validate.number("x", bad)
    for bad in ("", ".", "..", "../x", "a/b", ".x"):
        with pytest.raises(ValueError):
            validate.plain_name("--name", bad)


@requires_kernels
def test_training_stops_on_a_non_finite_loss_before_writing_a_checkpoint(tmp_path):
    pytest.importorskip("yaml")
    import train

    cfg = load_config(str(CONFIG), [f"train.out_dir={tmp_path / 'run'}", "train.max_steps=2", "train.ckpt_every=1",
                                    "train.log_every=1"])
    recipe = train.elf_recipe(cfg)
    calls = []
    good_loss = recipe.loss

    def loss(net, batch, gen):  # the second step's loss is NaN
        value, stats = good_loss(net, batch, gen)
        calls.append(1)
        return (value * float("nan") if len(calls) >= 2 else value), stats

    recipe.loss = loss
    with pytest.raises(train.NonFiniteLoss, match="by step 2"):
        train.run_training(cfg, recipe)
    assert [p.name for p in (tmp_path / "run").glob("ckpt_*")] == ["ckpt_00000001"]  # step 1 only
    assert isinstance(train.NonFiniteLoss("x"), cli.USER_ERRORS)  # one error line, status 2


def test_resume_refuses_another_run_and_a_truncated_state(tmp_path):
    import dataclasses

    import train

    cfg = load_config(str(CONFIG), [f"train.out_dir={tmp_path}"])
    ck = tmp_path / "ckpt_00000002"
    header = {"encoder": {"name_or_path": "all-MiniLM-L6-v2"}, "data": {"task": "unconditional", "seq_len": 8},
              "train_config": dataclasses.asdict(cfg)}
    model = create_model("ELF-T", latent_dim=16, vocab_size=50, max_length=8)
    for name in ("model", "ema"):
        save_checkpoint(ck / f"{name}.safetensors", model, header)
    (ck / "state.pt").write_bytes(b"PK\x03\x04truncated")
    train.check_resume(ck, cfg)  # the same settings: accepted
    for override, what in (("data.seq_len=16", "data.seq_len"), ("train.global_batch=64", "train.global_batch"),
                           ("model.preset=ELF-B", "model.preset")):
        with pytest.raises(CheckpointError, match=what):
            train.check_resume(ck, load_config(str(CONFIG), [f"train.out_dir={tmp_path}", override]))
    with pytest.raises(CheckpointError, match="state.pt"):
        train.load_resume_state(ck, model, create_model("ELF-T", latent_dim=16, vocab_size=50, max_length=8), [])
    other = create_model("ELF-XS", latent_dim=16, vocab_size=50, max_length=8)  # another preset's shapes
    with pytest.raises(CheckpointError, match="does not fit"):
        train.load_resume_state(ck, other, other, [])


def test_resumed_runs_drop_the_metrics_logged_after_their_checkpoint(tmp_path):
    import train

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6)) + '{"step": 8, "lo')
    assert train.trim_metrics(path, 4) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]


# ------------------------------------------------------------- 4. API exception types
def test_generator_api_raises_its_documented_exceptions(tiny_ckpt, tmp_path, capsys):
    gen = Generator.from_checkpoint(tiny_ckpt, device="cpu")
    for seed in (1.5, True, None, "a", 2**63, -1):
        with pytest.raises(ValueError, match="seed"):
            gen.sample(1, seed=seed, steps=1)
    for steps in (math.inf, True, 2.5, "2", 0):
        with pytest.raises(ValueError, match="steps"):
            gen.sample(1, steps=steps)
    for kw in (dict(batch_size=1e8), dict(length=2.5), dict(w_sc=math.nan)):
        with pytest.raises(ValueError):
            gen.sample(1, steps=1, **kw)
    with pytest.raises(ValueError):
        gen.translate(None)
    with pytest.raises(ValueError):
        Generator.from_checkpoint(None)
    with pytest.raises(ValueError):
        Generator.from_checkpoint("")
    with pytest.raises(CheckpointError):
        Generator.from_checkpoint("/dev/null")
    with pytest.raises(FileNotFoundError):
        Generator.from_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="dtype"):
        Generator.from_checkpoint(tiny_ckpt, dtype=torch.int8)
    with pytest.raises(ValueError, match="cpu or cuda"):
        Generator.from_checkpoint(tiny_ckpt, device="meta")
    assert len(gen.sample(1, seed=2**63 - 1, steps=1)) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""  # the API prints nothing


# ------------------------------------------------- 5. ops: one rule for NaN / inf inputs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(6, 16, 8, 50), (70, 96, 128, 3000)], ids=["small", "tensor_core"])
def test_unembed_argmax_nan_never_wins_on_every_backend(kdev, shape, dtype):
    N, H, C, V = shape
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, H, generator=g)
    P, p = torch.randn(H, C, generator=g) * H**-0.5, torch.zeros(C)
    U, u = torch.randn(C, V, generator=g) * 3 * C**-0.5, torch.zeros(V)
    cases = {
        "NaN column of U": (h, U.clone().index_fill_(1, torch.tensor([7]), math.nan), u),
        "one NaN in U": (h, U.clone().index_put_((torch.tensor([3]), torch.tensor([40])), torch.tensor(math.nan)), u),
        "NaN row of h": (h.clone().index_fill_(0, torch.tensor([2]), math.nan), U, u),
        "NaN bias": (h, U, u.clone().index_fill_(0, torch.tensor([11]), math.nan)),
        "all-NaN bias": (h, U, torch.full_like(u, math.nan)),
        "+inf bias": (h, U, u.clone().index_fill_(0, torch.tensor([9]), math.inf)),
        "-inf bias": (h, U, u.clone().index_fill_(0, torch.tensor([9]), -math.inf)),
    }
    for name, (hh, UU, uu) in cases.items():
        args = [t.to(dtype) for t in (hh, P, p, UU, uu)]
        ref_ids, ref_best = ops.unembed_argmax(*args, backend="reference")
        ids, best = ops.unembed_argmax(*kdev.to(*args), backend=kdev.backend)
        assert torch.equal(ids.cpu(), ref_ids), name
        finite = ref_best.isfinite()
        assert torch.equal(best.cpu()[~finite], ref_best[~finite]), name  # -inf where a row has no non-NaN logit
        assert torch.allclose(best.cpu()[finite], ref_best[finite], rtol=1e-4, atol=1e-4), name
    # the rule itself: NaN never wins; a row of NaN only gets id 0 and -inf
    ids, best = ops.unembed_argmax(h, P, p, U, torch.full_like(u, math.nan), backend="reference")
    assert ids.eq(0).all() and best.eq(-math.inf).all()


@pytest.mark.parametrize("kw", [dict(t=math.nan), dict(t_next=math.inf), dict(cfg=math.inf), dict(alpha=math.nan),
                                dict(sigma_n=math.nan), dict(t_eps=math.inf), dict(seed=2**63),
                                dict(offset=-(2**63) - 1), dict(index_base=2**63), dict(seed=1.5)])
def test_flow_step_refuses_non_finite_scalars_and_oversized_ints_on_every_backend(kdev, kw):
    z, x = torch.randn(4, 8), torch.randn(4, 8)
    step = {"t": 0.2, "t_next": 0.5, "alpha": 0.9, **kw}
    for backend in ("reference", kdev.backend):
        with pytest.raises(ValueError, match=next(iter(kw))):
            ops.flow_step(*kdev.to(z, x), **step, backend=backend)


@requires_kernels
def test_the_raw_ops_refuse_non_finite_scalars_too():
    z = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="'t_next' must be a finite number"):
        torch.ops.elf_fast.flow_step(z, z, None, None, None, 0.2, math.inf, 1.0, 1.0, 1.0, 1e-3, 0, 0, 0)


@pytest.mark.parametrize("kw", [dict(vocab_tile=2**63), dict(vocab_tile=-1), dict(vocab_tile=True)])
def test_unembed_argmax_refuses_bad_ints(kw):
    h, P, p, U, u = torch.randn(2, 4), torch.randn(4, 4), torch.zeros(4), torch.randn(4, 10), torch.zeros(10)
    with pytest.raises(ValueError, match="vocab_tile"):
        ops.unembed_argmax(h, P, p, U, u, **kw, backend="reference")


def test_linear_cross_entropy_refuses_bad_chunk():
    h, P, p, U, u = torch.randn(2, 4), torch.randn(4, 4), torch.zeros(4), torch.randn(4, 10), torch.zeros(10)
    with pytest.raises(ValueError, match="chunk"):
        ops.linear_cross_entropy(h, P, p, U, u, torch.tensor([1, 2]), chunk=2**64, backend="reference")


# ------------------------------------------------------------------------ 6. smaller
@pytest.fixture(scope="module")
def conditional_ckpt(tmp_path_factory):
    meta = {"encoder": {"name_or_path": "all-MiniLM-L6-v2", "mu": 0.0, "sigma": 0.36},
            "data": {"task": "translation", "max_input_length": 8, "max_length": 16}}
    return _tiny(tmp_path_factory.mktemp("ckpt") / "cond.safetensors", meta, vocab_size=30522, max_length=24)


def test_condition_inputs_that_were_silently_ignored_are_errors(tmp_path, conditional_ckpt, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    base = ["--checkpoint", str(conditional_ckpt), "--steps", "1", "--no-progress"]
    for argv, match in ((["--condition-file", str(empty)], "holds no condition"),
                        (["--condition-file", str(tmp_path)], "is a folder"),
                        (["--condition", "x", "--num-samples", "3"], "--num-samples"),
                        (["--condition", "x" * 90_000], "characters"),
                        (["--condition", "  "], "empty")):
        status, err = _run_cli(sample.main, base + argv, capsys)
        assert status == 2 and len(err) == 1 and match in err[0], (argv, err)


def test_ppl_device_is_named_as_such(tiny_ckpt, tmp_path, capsys):
    from elf_fast import evaluate

    status, err = _run_cli(evaluate.main, ["run", "--checkpoint", str(tiny_ckpt), "--out-dir", str(tmp_path),
                                           "--ppl-device", "mps", "--no-progress"], capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith("error: --ppl-device"), err


def test_backend_env_is_checked_before_anything_is_written(tmp_path, tiny_ckpt, capsys, monkeypatch):
    out = tmp_path / "k.jsonl"
    out.write_text("keep\n")
    monkeypatch.setenv("ELF_FAST_BACKEND", "nope")
    status, err = _run_cli(sample.main, ["--checkpoint", str(tiny_ckpt), "--out", str(out), "--no-progress"], capsys)
    assert status == 2 and len(err) == 1 and "ELF_FAST_BACKEND" in err[0]
    assert out.read_text() == "keep\n"

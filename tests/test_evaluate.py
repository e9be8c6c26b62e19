import json
import math

import pytest
import torch

from elf_fast import evaluate, sample
from elf_fast.checkpoint import save_checkpoint
from elf_fast.model import create_model
from conftest import requires_kernels

pytestmark = requires_kernels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--no-progress", "--steps", "2", "--length", "8", "--device", "cpu"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """A tiny random GPT-2 on the MiniLM vocabulary: a local --ppl-model that loads offline."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from elf_fast.encoder import resolve_encoder_path

    path = tmp_path_factory.mktemp("judge")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=30522, n_positions=128)).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_encoder_path(None), local_files_only=True).save_pretrained(path)
    return str(path)


JUDGE_CTX = ["--ppl-max-length", "128"]  # the judge's position limit


def _ckpt(tmp_path_factory, name: str, data: dict):
    torch.manual_seed(0)
    model = create_model("ELF-T", latent_dim=384, vocab_size=30522, max_length=24)  # MiniLM's: checked on load
    with torch.no_grad():
        model.final_layer.linear.weight.normal_(0, 0.02)
    meta = {"encoder": {"name_or_path": "all-MiniLM-L6-v2", "mu": 0.0, "sigma": 0.36}, "data": data}
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / f"{name}.safetensors", model, meta, preset="ELF-T"))


@pytest.fixture(scope="module")
def uncond_ckpt(tmp_path_factory):
    return _ckpt(tmp_path_factory, "uncond", {"seq_len": 16})


@pytest.fixture(scope="module")
def translation_ckpt(tmp_path_factory):
    return _ckpt(tmp_path_factory, "wmt", {"task": "translation", "max_input_length": 8, "max_length": 16})


@pytest.fixture(scope="module")
def summary_ckpt(tmp_path_factory):
    return _ckpt(tmp_path_factory, "xsum", {"task": "summary", "max_input_length": 8, "max_length": 16})


@pytest.fixture
def pairs(tmp_path):
    rows = [{"condition": "Ein kleines Werkzeug", "target": "a small tool"},
            {"condition": "Die Bibliothek", "target": "the library"},
            {"condition": "Ein Paket fuer Debian", "target": "a package for debian"}]
    path = tmp_path / "test.jsonl"  # the file name gives the split
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_unconditional_run_end_to_end(uncond_ckpt, judge, tmp_path, capsys):
    out = tmp_path / "eval"
    # no subcommand: `run` is the default
    assert evaluate.main(["--checkpoint", uncond_ckpt, "--num-samples", "5", "--batch-size", "2", "--seed", "3",
                          "--sampler", "sde", "--gamma", "1.0", "--sc-cfg", "2", "--ppl-model", judge, *JUDGE_CTX,
                          "--ppl-batch-size", "2", "--out-dir", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert report["mode"] == "unconditional" and report["checkpoint"] == uncond_ckpt
    assert m["gen_ppl"] > 0 and math.isfinite(m["gen_ppl"]) and m["entropy"] >= 0
    assert m["n_samples"] == 5 and 0 <= m["n_empty"] <= 5
    assert report["sampler"]["steps"] == 2 and report["sampler"]["sampler"] == "sde"
    assert report["sampler"]["gamma"] == 1.0 and report["sampler"]["w_sc"] == 2.0 and report["sampler"]["cfg"] == 1.0
    assert report["seed"] == 3 and report["device"] == "cpu" and report["ppl_model"] == judge
    assert report["length"] == 8 and report["elapsed_s"] > 0
    md = (out / "report.md").read_text()
    assert "| metric | value |" in md and "| gen_ppl |" in md and "| checkpoint |" in md and "| sampler.steps | 2 |" in md
    assert "| gen_ppl |" in printed
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(5)) and all(isinstance(r["text"], str) for r in recs)

    # the sampling path is sample.py's: same seed and batch size give the same texts
    ref = tmp_path / "sample.jsonl"
    assert sample.main(["--checkpoint", uncond_ckpt, "--num-samples", "5", "--batch-size", "2", "--seed", "3",
                        "--sampler", "sde", "--gamma", "1.0", "--sc-cfg", "2", "--out", str(ref), *FAST]) == 0
    assert [json.loads(line)["text"] for line in ref.read_text().splitlines()] == [r["text"] for r in recs]


def test_texts_scoring_with_references(judge, tmp_path):
    texts = tmp_path / "hyps.jsonl"
    rows = [{"text": "the cat sat on the mat", "reference": "the cat sat on the mat"},
            {"text": "a small tool for the shell", "reference": "a small shell tool"},
            {"text": "", "reference": "an empty sample"}]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    assert evaluate.main(["run", "--texts", str(texts), "--out-dir", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert report["mode"] == "texts" and 0 < m["bleu"] <= 100 and "nrefs" in m["bleu_signature"]
    assert {"rouge1", "rouge2", "rougeL"} <= set(m) and m["n_empty"] == 1 and m["n_samples"] == 3
    assert "gen_ppl" not in m  # references given: no Gen. PPL unless asked

    # without references: Gen. PPL under the judge; --metric picks the reference metric
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    assert evaluate.main(["run", "--texts", str(plain), "--ppl-model", judge, *JUDGE_CTX, "--out-dir", str(out),
                          "--no-progress"]) == 0
    m = json.loads((out / "report.json").read_text())["metrics"]
    assert m["gen_ppl"] > 0 and "bleu" not in m and m["n_empty"] == 1
    assert evaluate.main(["run", "--texts", str(texts), "--metric", "bleu", "--gen-ppl", "--ppl-model", judge,
                          *JUDGE_CTX, "--out-dir", str(out), "--no-progress"]) == 0
    m = json.loads((out / "report.json").read_text())["metrics"]
    assert "bleu" in m and "rouge1" not in m and m["gen_ppl"] > 0


@pytest.mark.parametrize("task", ["summary", "translation"])
def test_conditional_run_scores_against_references(task, summary_ckpt, translation_ckpt, pairs, tmp_path):
    ckpt = summary_ckpt if task == "summary" else translation_ckpt
    out = tmp_path / "eval"
    assert evaluate.main(["run", "--checkpoint", ckpt, "--data", pairs, "--limit", "2", "--out-dir", str(out),
                          *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert report["mode"] == "conditional" and report["task"] == task and m["n_samples"] == 2
    # docs/method.md §5 defaults for conditional tasks (steps given here): ODE, cfg 2, w_sc 1
    assert report["sampler"]["sampler"] == "ode" and report["sampler"]["cfg"] == 2.0
    assert report["sampler"]["w_sc"] == 1.0 and report["split"] == "test"
    if task == "summary":
        assert {"rouge1", "rouge2", "rougeL"} <= set(m) and "bleu" not in m
        assert all(0 <= m[k] <= 100 for k in ("rouge1", "rouge2", "rougeL"))
    else:
        assert "bleu" in m and "rouge1" not in m and 0 <= m["bleu"] <= 100
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in recs] == ["a small tool", "the library"]
    assert [r["condition"] for r in recs] == ["Ein kleines Werkzeug", "Die Bibliothek"]


def test_sweep_default_steps_reach_down_to_few_step_students():
    args = evaluate.parse_args(["sweep", "--checkpoint", "ckpt"])
    assert args.steps == [1, 2, 4, 8, 16, 32, 64] and list(evaluate.SWEEP_STEPS) == args.steps
    settings = evaluate.sweep_settings(args.steps, args.samplers, [2.5], args.gammas)
    assert {(s["steps"], s["sampler"]) for s in settings} >= {(1, "sde"), (2, "sde"), (4, "sde"), (4, "ode")}


def test_sweep_writes_plots_and_resumes(uncond_ckpt, judge, tmp_path, capsys):
    out = tmp_path / "sweep"
    base = ["sweep", "--checkpoint", uncond_ckpt, "--ppl-model", judge, *JUDGE_CTX, "--num-samples", "3",
            "--length", "8", "--device", "cpu", "--no-progress", "--out-dir", str(out), "--w-sc", "3"]
    assert evaluate.main([*base, "--steps", "1", "2", "--samplers", "ode", "sde"]) == 0
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert sorted((r["sampler"], r["steps"]) for r in rows) == [("ode", 1), ("ode", 2), ("sde", 1), ("sde", 2)]
    for r in rows:
        assert r["gen_ppl"] > 0 and r["entropy"] >= 0 and r["w_sc"] == 3.0 and r["seconds"] >= 0
        assert r["gamma"] == (1.5 if r["sampler"] == "sde" else None) and r["seed"] == 0
    md = (out / "sweep.md").read_text()
    assert "| steps | sampler | gamma | w_sc | gen_ppl | entropy | n_empty | seconds |" in md
    for name in ("frontier.png", "ppl_vs_steps.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    capsys.readouterr()

    # a second call with one more setting runs only that one and keeps the earlier rows as they were
    assert evaluate.main([*base, "--steps", "1", "2", "4", "--samplers", "ode"]) == 0
    assert "1 to run" in capsys.readouterr().err
    again = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert again[:4] == rows and len(again) == 5 and (again[4]["sampler"], again[4]["steps"]) == ("ode", 4)
    assert (out / "sweep.md").read_text().count("\n| ") == 5 + 1  # header + 5 rows (separator starts "|-")

    # a cut-off last line (a killed sweep) is dropped and its setting run again
    path = out / "sweep.jsonl"
    path.write_text(path.read_text() + '{"steps": 8, "sampl')
    assert evaluate.main([*base, "--steps", "1", "2", "4", "--samplers", "ode"]) == 0
    assert len(path.read_text().splitlines()) == 5

    # rows of another sweep (different seed) are not mixed in
    with pytest.raises(SystemExit, match="different sweep"):
        evaluate.main([*base, "--steps", "1", "--samplers", "ode", "--seed", "1"])


def test_clear_errors(uncond_ckpt, translation_ckpt, pairs, judge, tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        evaluate.main(["run", "--texts", str(tmp_path / "missing.jsonl"), "--no-progress"])
    with pytest.raises(SystemExit, match="conditional.*--data"):
        evaluate.main(["run", "--checkpoint", translation_ckpt, "--out-dir", str(tmp_path), *FAST])
    with pytest.raises(SystemExit, match="unconditional"):
        evaluate.main(["run", "--checkpoint", uncond_ckpt, "--data", pairs, "--out-dir", str(tmp_path), *FAST])
    with pytest.raises(SystemExit, match="split 'validation'"):
        evaluate.main(["run", "--checkpoint", translation_ckpt, "--data", pairs, "--split", "validation",
                       "--out-dir", str(tmp_path), *FAST])
    with pytest.raises(SystemExit, match="ppl-model"):
        evaluate.main(["run", "--checkpoint", uncond_ckpt, "--num-samples", "1", "--ppl-model",
                       str(tmp_path / "no-judge"), "--out-dir", str(tmp_path), *FAST])
    with pytest.raises(SystemExit, match="sweep evaluates unconditional"):
        evaluate.main(["sweep", "--checkpoint", translation_ckpt, "--steps", "1", "--ppl-model", judge,
                       *JUDGE_CTX, "--out-dir", str(tmp_path), "--no-progress"])
    with pytest.raises(SystemExit):
        evaluate.main(["run", "--num-samples", "0"])

import json
from pathlib import Path

import pytest
import torch

from elf_fast import generator, sample
from elf_fast.checkpoint import save_checkpoint
from elf_fast.model import create_model
from conftest import requires_kernels

pytestmark = requires_kernels


@pytest.fixture(scope="module")
def conditional_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("ELF-T", latent_dim=384, vocab_size=30522, max_length=24)  # MiniLM's: checked on load
    with torch.no_grad():
        model.final_layer.linear.weight.normal_(0, 0.02)
    meta = {"encoder": {"name_or_path": "all-MiniLM-L6-v2", "mu": 0.0, "sigma": 0.36},
            "data": {"task": "translation", "max_input_length": 8, "max_length": 16, "pad_token": "eos"}}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "cond.safetensors", model, meta, preset="ELF-T")


def test_without_a_built_in_checkpoint_it_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(generator, "ASSETS", tmp_path)  # an installation that ships no checkpoint
    with pytest.raises(FileNotFoundError, match="ships no built-in checkpoint"):
        sample.main(["--num-samples", "2", "--no-progress"])


@pytest.mark.skipif(generator.builtin_checkpoint() is None, reason="no built-in checkpoint in elf_fast/assets")
def test_default_run_uses_the_shipped_checkpoint(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = generator.builtin_checkpoint()
    assert path.stat().st_size <= 26 * 2**20
    assert sample.main(["--num-samples", "2", "--steps", "4", "--no-progress", "--seed", "1"]) == 0
    out = capsys.readouterr()
    assert "recommended sampler ode" in out.err
    texts = [line.split("] ", 1)[1] for line in out.out.splitlines() if line.startswith("[")]
    assert len(texts) == 2 and all(t.strip() for t in texts)


def test_readme_samples_are_what_the_default_command_prints(capsys, monkeypatch):
    # README shows "$ python -m elf_fast.sample --num-samples 3" and its output verbatim. Recorded
    # on an AVX2 x86-64 CPU; it also came out identical with ATEN_CPU_CAPABILITY=default and
    # MKL_ENABLE_INSTRUCTIONS=SSE4_2 (other vector code paths), so exact equality is asked.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    cmd = "$ python -m elf_fast.sample --num-samples 3\n"
    assert cmd in readme
    shown = readme.split(cmd, 1)[1].split("```", 1)[0].strip().splitlines()
    assert sample.main(["--num-samples", "3", "--no-progress"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert printed == shown


def test_readme_python_example_prints_the_same_samples(capsys, monkeypatch):
    # the README's Python example, run as written: it prints the texts the README shows for the CLI
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = readme.split("```python\nfrom elf_fast import Generator\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 4  # five lines with the import
    shown = readme.split("$ python -m elf_fast.sample --num-samples 3\n", 1)[1].split("```", 1)[0].strip().splitlines()
    exec("from elf_fast import Generator\n" + code, {"__name__": "readme"})
    assert capsys.readouterr().out.splitlines() == shown


@pytest.mark.skipif(generator.builtin_checkpoint() is None, reason="no built-in checkpoint in elf_fast/assets")
def test_sample_i_is_the_same_at_any_batch_size_and_seeds_differ(monkeypatch):
    from elf_fast import Generator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gen = Generator.from_pretrained(device="cpu")
    kw = dict(steps=4, length=24)
    four = gen.sample(4, batch_size=4, **kw)
    assert gen.sample(4, batch_size=1, **kw) == four and gen.sample(4, batch_size=3, **kw) == four
    # --seed 1 used to print --seed 0's sample [1] (batch seeds were seed + first index)
    other = gen.sample(4, seed=1, batch_size=1, **kw)
    assert all(a != b for a, b in zip(other, four)) and other[0] != four[1]


def test_generator_api_errors_and_conditional_use(conditional_ckpt):
    from elf_fast import Generator

    gen = Generator.from_checkpoint(conditional_ckpt, device="cpu")
    assert gen.conditional and gen.task == "translation" and gen.default_length == 8
    assert gen.sampler().cfg == 2.0 and gen.sampler(steps=3).steps == 3
    texts = gen.translate(["Ein kleines Werkzeug", "Bibliothek"], steps=2, seed=1)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert gen.translate("Ein kleines Werkzeug", steps=2, seed=1) == texts[0]  # one string in, one out
    with pytest.raises(ValueError, match="conditional"):
        gen.sample(2)
    with pytest.raises(ValueError, match="samples max_length - max_input_length = 8 target tokens"):
        gen.translate(["x"], length=40, steps=1)  # the packed layout fixes the target length
    assert gen.translate(["x"], length=8, steps=1, seed=1) == gen.translate(["x"], steps=1, seed=1)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, "):
        gen.translate(["x"], steps=0)
    with pytest.raises(ValueError, match="not a device"):
        Generator.from_checkpoint(conditional_ckpt, device="tpu")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Generator.from_checkpoint(Path(conditional_ckpt).parent / "missing.safetensors", device="cpu")


def test_an_interrupted_run_keeps_its_finished_batches_and_bad_outputs_fail_first(conditional_ckpt, tmp_path,
                                                                                   monkeypatch, capsys):
    from elf_fast import generator as gen_module
    from elf_fast.cli import run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real, calls = gen_module.sample_latents, []

    def interrupted(*a, **k):  # Ctrl-C during the second batch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gen_module, "sample_latents", interrupted)
    out = tmp_path / "s.jsonl"
    args = ["--checkpoint", str(conditional_ckpt), "--condition", "Werkzeug", "--condition", "Bibliothek",
            "--batch-size", "1", "--steps", "2", "--no-progress", "--out", str(out)]
    assert run(sample.main, args) == 130
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["condition"]) for r in recs] == [(0, "Werkzeug")]  # the first batch is there
    calls.clear()
    assert run(sample.main, args[:-1] + [str(tmp_path / "no" / "dir" / "s.jsonl")]) == 2
    assert not calls  # failed before sampling anything
    assert "cannot be written" in capsys.readouterr().err


def test_conditional_checkpoint_with_cfg_writes_jsonl(conditional_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "s.jsonl"
    args = ["--checkpoint", str(conditional_ckpt), "--condition", "Ein kleines Werkzeug", "--condition",
            "Bibliothek", "--cfg", "2", "--sampler", "ode", "--steps", "3", "--sc-cfg", "1", "--out", str(out),
            "--no-progress", "--seed", "5"]
    assert sample.main(args) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["condition"] for r in recs] == ["Ein kleines Werkzeug", "Bibliothek"]
    assert all(isinstance(r["text"], str) for r in recs)
    again = tmp_path / "t.jsonl"
    assert sample.main(args[:-5] + ["--out", str(again), "--no-progress", "--seed", "5"]) == 0
    assert again.read_text() == out.read_text()  # same seed, same text


def test_checkpoint_recommended_sampler_is_the_default_and_the_command_line_wins(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = create_model("ELF-T", latent_dim=384, vocab_size=30522, max_length=16)  # MiniLM's: checked on load
    meta = {"encoder": {"name_or_path": "all-MiniLM-L6-v2", "mu": 0.0, "sigma": 0.36},
            "data": {"task": "unconditional", "seq_len": 8}, "sampler": {"sampler": "ode", "steps": 3, "w_sc": 2.0}}
    ckpt = save_checkpoint(tmp_path / "rec.safetensors", model, meta, preset="ELF-T")
    base = ["--checkpoint", str(ckpt), "--num-samples", "1", "--no-progress"]
    assert sample.main(base) == 0
    err = capsys.readouterr().err
    assert "recommended sampler ode, steps 3, w_sc 2.0" in err and "3-step ODE, w_sc 2.0" in err
    assert sample.main(base + ["--sampler", "sde", "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "recommended w_sc 2.0 (" in err and "2-step SDE, w_sc 2.0" in err
    from elf_fast.sampling import sampler_settings

    assert sampler_settings(False).sampler == "sde"  # without a recommendation: the method's defaults
    # a bad recommendation is not even written (and a file holding one is a CheckpointError when read,
    # tests/test_inputs.py)
    for bad, match in (({"sampler": "euler"}, "sampler"), ({"steps": "many"}, "steps"), ({"temperature": 1.0},
                                                                                         "temperature")):
        meta["sampler"] = bad
        with pytest.raises(ValueError, match=match):
            save_checkpoint(ckpt, model, meta, preset="ELF-T")


def test_cli_errors(conditional_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match="conditional"):
        sample.main(["--checkpoint", str(conditional_ckpt), "--steps", "1", "--no-progress"])
    with pytest.raises(SystemExit, match="does not exist"):
        sample.main(["--checkpoint", str(conditional_ckpt), "--condition-file", str(tmp_path / "nope.txt")])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        sample.main(["--checkpoint", str(tmp_path / "missing.safetensors"), "--no-progress"])
    with pytest.raises(SystemExit):
        sample.main(["--num-samples", "0"])
    with pytest.raises(SystemExit, match="is not a device"):
        sample.main(["--device", "tpu", "--no-progress"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA is not available"):
            sample.main(["--device", "cuda", "--no-progress"])
    with pytest.raises(SystemExit):  # not a torch.compile mode
        sample.parse_args(["--compile", "fast"])
    assert sample.parse_args(["--compile", "reduce-overhead"]).compile == "reduce-overhead"
    from elf_fast import evaluate

    assert evaluate.parse_args(["sweep", "--compile", "default"]).compile == "default"
    with pytest.raises(SystemExit):
        evaluate.parse_args(["run", "--compile", "fast"])
    with pytest.raises(SystemExit, match="--cfg applies to conditional"):
        sample.main(["--cfg", "2", "--no-progress"])

"""elf_fast.export_builtin: a training run's EMA weights become the shipped checkpoint."""
import json

import pytest
import torch

from elf_fast import export_builtin
from elf_fast.checkpoint import HEADER_VERSION, load_checkpoint, save_checkpoint
from elf_fast.model import create_model


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(export_builtin, "ASSETS", tmp_path / "assets")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "old.safetensors").write_bytes(b"stale")
    torch.manual_seed(0)
    run = tmp_path / "run"
    for step in (10, 20):
        model = create_model("ELF-T", latent_dim=16, vocab_size=50, max_length=8)
        save_checkpoint(run / f"ckpt_{step:08d}" / "ema.safetensors", model,
                        {"data": {"task": "unconditional", "seq_len": 8}}, preset="ELF-T")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 20, "loss": 1.5, "ce": 4.0, "lr": 1e-3}) + "\n")
    return run, model


def test_export_takes_the_newest_ema_in_bf16_with_its_recipe_and_sampler(run_dir):
    run, newest = run_dir
    assert export_builtin.main([str(run), "--name", "tiny", "--sampler", "ode", "--steps", "16"]) == 0
    shipped = sorted((run.parent / "assets").glob("*.safetensors"))
    assert [p.name for p in shipped] == ["tiny.safetensors"]  # the stale one is gone
    model, header = load_checkpoint(shipped[0])
    assert header.sampler == {"sampler": "ode", "steps": 16}
    built_in = header.extra["built_in"]
    assert built_in["step"] == 20 and built_in["last_logged"] == {"step": 20, "loss": 1.5, "ce": 4.0}
    assert header.preset == "ELF-T" and header.data.seq_len == 8 and header.version == HEADER_VERSION
    for k, v in newest.state_dict().items():  # bf16 storage: one rounding of the newest EMA
        assert torch.equal(model.state_dict()[k], v.to(torch.bfloat16).float()), k


def test_export_errors(run_dir, tmp_path):
    run, _ = run_dir
    with pytest.raises(SystemExit, match=r"argument --steps: must be an integer in \[1, "):
        export_builtin.main([str(run), "--steps", "0"])
    with pytest.raises(SystemExit, match="cfg, which applies to conditional"):  # the run is unconditional
        export_builtin.main([str(run), "--cfg", "2"])
    with pytest.raises(FileNotFoundError, match="no ckpt_"):
        export_builtin.export(tmp_path / "empty")


def test_export_of_a_continued_run_counts_every_step(tmp_path, monkeypatch):
    """A run started with train.init_from from a model trained 3,000 steps: its header says so, and
    the shipped header's built_in.total_steps adds both runs' steps."""
    monkeypatch.setattr(export_builtin, "ASSETS", tmp_path / "assets")
    (tmp_path / "assets").mkdir()
    model = create_model("ELF-T", latent_dim=16, vocab_size=50, max_length=8)
    run = tmp_path / "run"
    save_checkpoint(run / "ckpt_00000500" / "ema.safetensors", model,
                    {"data": {"task": "unconditional", "seq_len": 8},
                     "init_from": {"path": "v1.safetensors", "from_step": 3000}}, preset="ELF-T")
    assert export_builtin.main([str(run), "--name", "tiny"]) == 0
    _, header = load_checkpoint(tmp_path / "assets" / "tiny.safetensors")
    assert header.extra["built_in"]["step"] == 500 and header.extra["built_in"]["total_steps"] == 3500
    assert header.extra["init_from"]["path"] == "v1.safetensors"

"""The T5 conditional path offline, end to end: the tiny T5 encoder and T5-style Unigram tokenizer
of tests/fixtures/tiny_t5 (random weights, trained on Debian text; no hub) through training
(the packed layout with label drop, pad_token eos), sampling with CFG, and decoding with the same
tokenizer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elf_fast import Generator
from elf_fast.checkpoint import read_state, save_checkpoint
from elf_fast.encoder import FrozenEncoder
from elf_fast.model import create_model

ROOT = Path(__file__).resolve().parents[1]
TINY_T5 = ROOT / "tests" / "fixtures" / "tiny_t5"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
CONDITIONS = ["Ein kleines Werkzeug für Debian", "Bibliothek"]


@pytest.fixture(scope="module")
def enc():
    return FrozenEncoder(str(TINY_T5))


@pytest.fixture(scope="module")
def t5_ckpt(tmp_path_factory, enc):
    torch.manual_seed(0)
    model = create_model("ELF-T", latent_dim=enc.latent_dim, vocab_size=enc.vocab_size, max_length=24)
    with torch.no_grad():
        model.final_layer.linear.weight.normal_(0, 0.02)
        model.unembed_kernel.normal_(0, 0.5)
    meta = {"encoder": {"name_or_path": str(TINY_T5), "mu": 0.0, "sigma": 0.2},
            "data": {"task": "translation", "max_input_length": 8, "max_length": 24, "pad_token": "eos"}}
    return save_checkpoint(tmp_path_factory.mktemp("t5") / "t5.safetensors", model, meta, preset="ELF-T")


def test_the_t5_tokenizer_and_encoder(enc):
    assert enc.is_t5 and enc.sigma == 0.2 and enc.latent_dim == 32
    assert (enc.eos_id, enc.pad_id) == (1, 0)  # T5's </s> and <pad>
    ids = enc.tokenizer(CONDITIONS[0])["input_ids"]
    assert ids[-1] == enc.eos_id  # T5 appends </s>
    assert enc.tokenizer.decode(ids, skip_special_tokens=True) == CONDITIONS[0]


def test_sampling_encodes_the_condition_alone_and_decodes_with_the_same_tokenizer(t5_ckpt, enc):
    gen = Generator.from_checkpoint(t5_ckpt, device="cpu")
    assert gen.conditional and gen.default_length == 16 and gen.encoder.is_t5
    x_cond, cond_mask, cond_len, tokens = gen._encode_conditions(CONDITIONS)
    plain = enc.tokenizer(CONDITIONS, add_special_tokens=False)["input_ids"]
    assert cond_len.tolist() == [min(len(p), 8) for p in plain]
    # the condition's latents are the encoder's output for the condition alone (§4.1)
    ids = torch.zeros(2, 24, dtype=torch.long)
    for b, p in enumerate(plain):
        ids[b, :len(p[:8])] = torch.tensor(p[:8])
    alone = enc.encode(ids, cond_mask)
    assert (x_cond[cond_mask] - alone[cond_mask]).abs().max() < 1e-5
    texts = gen.translate(CONDITIONS, steps=3, seed=0)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # the text is the T5 tokenizer's decoding of the sampled ids: re-encoding gives T5 ids only
    for t in texts:
        assert all(0 <= i < enc.vocab_size for i in enc.tokenizer(t)["input_ids"])
    assert gen.translate(CONDITIONS, steps=3, seed=0) == texts  # seeded
    # a condition longer than max_input_length is cut, as the port's layout does, and says so
    long = " ".join(["Werkzeug"] * 40)
    rec = gen.generate(conditions=[long, CONDITIONS[1]], steps=1)
    assert rec[0]["condition_truncated"] and rec[0]["condition_tokens"] > 8
    assert not rec[1]["condition_truncated"] and rec[1]["condition_tokens"] == len(plain[1])


def test_training_samples_and_evaluates_with_the_t5_encoder(tmp_path, monkeypatch):
    cmd = [sys.executable, str(ROOT / "training" / "train.py"), "--config",
           str(ROOT / "training" / "configs" / "test_tiny.yaml"),
           "--override", f"train.out_dir={tmp_path}", "--override", f"encoder.name_or_path={TINY_T5}",
           "--override", "data.task=translation",
           "--override", "data.train=tests/fixtures/debian/de-en/train.jsonl",
           "--override", "data.validation=tests/fixtures/debian/de-en/validation.jsonl",
           "--override", "data.max_input_length=12", "--override", "data.max_length=24",
           "--override", "data.pad_token=eos", "--override", "objective.dec_noise_scale=1.0",
           "--override", "train.max_steps=2", "--override", "train.eval_every=0"]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses and all(v == v for v in losses)
    ckpt = next(tmp_path.glob("ckpt_*")) / "ema.safetensors"
    header = read_state(ckpt)[1]
    assert header["encoder"]["name_or_path"] == str(TINY_T5) and header["encoder"]["sigma"] == 0.2
    assert header["data"] == {"task": "translation", "max_input_length": 12, "max_length": 24, "pad_token": "eos"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gen = Generator.from_checkpoint(ckpt, device="cpu")
    assert gen.model.config.vocab_size == gen.encoder.vocab_size == 392
    assert len(gen.translate(["Ein Werkzeug"], steps=2)) == 1

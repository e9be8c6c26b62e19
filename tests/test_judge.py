"""The offline judge (elf_fast.judge): a tiny GPT-2 trained on the Debian fixture."""

import json
import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from elf_fast.data import load_text_dataset  # noqa: E402
from elf_fast.judge import load_judge_tokenizer, main, pack_documents, train_judge  # noqa: E402
from elf_fast.metrics import PerplexityScorer  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "debian", "en")
TINY = dict(n_layer=1, n_embd=64, n_head=2, seq_len=64, batch_size=8, lr=3e-3, seed=0, progress=False)


def test_pack_documents_layout():
    tok = load_judge_tokenizer(None)
    assert (tok.bos_token, tok.eos_token) == ("[CLS]", "[SEP]") and len(tok) == 30522
    stats = {}
    blocks = pack_documents(["hello world", "", "debian package"], tok, 3, seed=None, stats=stats)
    hello = tok("hello world", add_special_tokens=False)["input_ids"]
    deb = tok("debian package", add_special_tokens=False)["input_ids"]
    flat = [tok.bos_token_id] + hello + [tok.eos_token_id] + [tok.bos_token_id] + deb + [tok.eos_token_id]
    assert stats == {"documents": 2, "empty_skipped": 1, "tokens": len(flat), "blocks": len(flat) // 3}
    assert blocks.tolist() == torch.tensor(flat[:len(flat) // 3 * 3]).view(-1, 3).tolist()


def test_train_judge_lowers_perplexity(tmp_path, capsys):
    untrained = train_judge(FIXTURE, tmp_path / "untrained", steps=0, **TINY)
    trained = train_judge(FIXTURE, tmp_path / "trained", steps=30, **TINY)
    assert "validation perplexity" in capsys.readouterr().out
    info = json.loads((trained / "judge_info.json").read_text())
    info0 = json.loads((untrained / "judge_info.json").read_text())
    assert info["steps"] == 30 and info["val_ppl"] < info0["val_ppl"]

    texts = load_text_dataset(FIXTURE, "validation")["text"]
    res = {}
    for name, path in (("untrained", untrained), ("trained", trained)):
        scorer = PerplexityScorer(str(path), max_length=64, batch_size=16)
        assert scorer.bos_id == scorer.tokenizer.cls_token_id
        res[name] = scorer.score(texts)
        assert res[name]["n_samples"] == len(texts) and res[name]["n_empty"] == 0
    assert res["trained"]["ppl"] < 0.5 * res["untrained"]["ppl"]


def test_train_judge_deterministic_and_cli(tmp_path):
    a = train_judge(FIXTURE, tmp_path / "a", steps=3, **TINY)
    rc = main(["--data", FIXTURE, "--out", str(tmp_path / "b"), "--steps", "3", "--n-layer", "1", "--n-embd", "64",
               "--n-head", "2", "--seq-len", "64", "--batch-size", "8", "--lr", "3e-3", "--no-progress",
               "--val-split", "none"])
    assert rc == 0
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_judge_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        train_judge(str(tmp_path / "missing"), tmp_path / "out", steps=1, **TINY)
    with pytest.raises(ValueError, match="text_column"):
        train_judge(FIXTURE, tmp_path / "out", steps=1, text_column="nope", **TINY)
    with pytest.raises(ValueError, match="divisible"):
        train_judge(FIXTURE, tmp_path / "out", steps=1, **{**TINY, "n_head": 3})
    from elf_fast.cli import run

    assert run(main, ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--steps", "1"]) == 2

"""The tiny offline T5 fixture (tests/fixtures/tiny_t5, built by tests/fixtures/make_tiny_t5.py)
through elf_fast's encoder loader: it stands in for t5-small where the hub cannot be reached."""

import json
from pathlib import Path

import pytest
import torch

from elf_fast.encoder import FrozenEncoder, load_tokenizer, special_token_ids

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_T5 = FIXTURES / "tiny_t5"


@pytest.fixture(scope="module")
def enc():
    return FrozenEncoder(str(TINY_T5))


def test_fixture_is_small_and_t5_shaped():
    files = {p.name for p in TINY_T5.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert sum(p.stat().st_size for p in TINY_T5.iterdir()) < 1_000_000
    cfg = json.loads((TINY_T5 / "config.json").read_text())
    assert (cfg["model_type"], cfg["d_model"], cfg["num_layers"]) == ("t5", 32, 2)
    tok = load_tokenizer(str(TINY_T5))
    # like t5-small (32,100 tokens, 32,128 embedding rows): a few hundred tokens, more rows
    assert 200 <= len(tok) < cfg["vocab_size"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1  # sentinels last, reversed


def test_loads_from_a_local_path_as_a_t5_encoder(enc):
    assert enc.is_t5 and enc.model_type == "t5"
    assert type(enc.model).__name__ == "T5EncoderModel"
    assert (enc.latent_dim, enc.vocab_size) == (32, 392)
    assert (enc.eos_id, enc.pad_id, enc.bos_id) == (1, 0, None)
    assert enc.sigma == 0.2 and enc.mu == 0.0          # the T5 default (docs/method.md §1)
    assert enc.max_positions is None                   # relative attention: no position bound
    assert special_token_ids(enc.tokenizer) == (1, 0, None)


def test_tokenises_with_eos_as_t5_does(enc):
    ids, mask = enc.tokenize(["a tool to edit images", "Werkzeug zum Bearbeiten von Bildern " * 6], 16)
    n = int(mask[0].sum())
    assert ids[0, n - 1] == enc.eos_id and (ids[0, n:] == enc.pad_id).all() and not mask[0, n:].any()
    assert (ids[0, :n - 1] != enc.eos_id).all()        # EOS closes the sequence, nowhere else
    assert mask[1].all() and ids[1, -1] == enc.eos_id  # truncation keeps the closing </s>
    no_eos, m = enc.tokenize(["a tool to edit images"], 16, add_special_tokens=False)
    assert int(m.sum()) == n - 1 and (no_eos[0, :n - 1] == ids[0, :n - 1]).all()


def test_encodes_and_decodes_ids_back_to_text(enc):
    texts = []
    with open(FIXTURES / "debian" / "de-en" / "train.jsonl", encoding="utf-8") as f:
        for line in list(f)[:12]:
            rec = json.loads(line)
            texts += [rec["condition"].split("\n")[0], rec["target"].split("\n")[0]]
    ids, mask = enc.tokenize(texts, 48)
    x = enc.encode(ids, mask)
    assert x.shape == (len(texts), 48, 32) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and (x[~mask] == 0).all() and (x[mask].abs().sum(-1) > 0).all()
    exact = 0
    for text, row, m in zip(texts, ids, mask):
        row = row[m].tolist()
        back = enc.tokenizer.decode(row, skip_special_tokens=True)
        if enc.tokenizer.unk_token_id not in row and row[-1] == enc.eos_id:  # not truncated, nothing unknown
            assert back == " ".join(text.split()), (text, back)
            exact += 1
    assert exact >= len(texts) // 2  # German and English both tokenise (the tokenizer saw both)

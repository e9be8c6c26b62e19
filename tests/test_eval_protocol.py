"""Each published model's evaluation as the port runs it (elf_fast.protocol, `python -m elf_fast.evaluate
--checkpoint <published model>`), offline: hub-layout folders named after the published models hold a
tiny random model in the port's checkpoint format, the hub's datasets are stood in for by tiny local
ones laid out like them, and the tiny T5 fixture stands in for t5-small."""

import importlib.util
import json
import time
from dataclasses import replace

import pytest
import torch

from elf_fast import evaluate, hub, protocol
from elf_fast.cli import run
from test_hub import TINY_T5, tiny_port_checkpoint

needs_bleu = pytest.mark.skipif(importlib.util.find_spec("sacrebleu") is None, reason="needs sacrebleu")
needs_rouge = pytest.mark.skipif(importlib.util.find_spec("rouge_score") is None, reason="needs rouge-score")
datasets = pytest.importorskip("datasets")

DE_EN, XSUM = "embedded-language-flows/ELF-B-de-en-torch", "embedded-language-flows/ELF-B-xsum-torch"
FAST = ["--steps", "2", "--device", "cpu", "--no-progress"]

PAIRS = [("Ein kleines Werkzeug zum Bearbeiten von Bildern", "A small tool for editing pictures"),
         ("Die Bibliothek fuer Debian", "The library for Debian"),
         ("Ein Spiel mit Karten", "A game with cards")]


# --------------------------------------------------------------------------- the registry

def test_every_published_model_names_the_ports_protocol():
    ev = {m.name: m.evaluation for m in hub.PUBLISHED.values()}
    for name in ("ELF-B-owt-torch", "ELF-M-owt-torch", "ELF-L-owt-torch"):
        assert (ev[name].metric, ev[name].num_samples, ev[name].length) == ("gen_ppl", 1000, 1024)
        assert (ev[name].ppl_model, ev[name].ppl_max_length) == ("gpt2-large", 1024) and not ev[name].sets
    assert (ev["ELF-B-PD-owt-torch"].metric, ev["ELF-B-PD-owt-torch"].num_samples) == ("gen_ppl", 500)

    wmt, xsum = ev["ELF-B-de-en-torch"], ev["ELF-B-xsum-torch"]
    assert (wmt.metric, xsum.metric) == ("bleu", "rouge")
    for p, port_copy in ((wmt, "wmt14_de-en_validation_t5"), (xsum, "xsum_validation_t5")):
        assert p.default_set == "validation" and p.bleu == {"lowercase": True, "effective_order": True}
        v = p.eval_set(None)  # the port's eval_data_path, its first num_samples rows
        assert (v.dataset, v.source, v.target, v.saved, v.limit) == (
            f"embedded-language-flows/{port_copy}", "input", "target", True, 1000)
    t = wmt.eval_set("test")
    assert (t.dataset, t.config, t.split, t.source, t.target, t.limit) == (
        "wmt/wmt14", "de-en", "test", "translation.de", "translation.en", None)
    t = xsum.eval_set("test")
    assert (t.dataset, t.split, t.source, t.target) == ("EdinburghNLP/xsum", "test", "document", "summary")
    with pytest.raises(ValueError, match="not 'train'"):
        wmt.eval_set("train")


@needs_bleu
def test_the_ports_bleu_is_lower_cased_with_the_effective_order():
    import sacrebleu

    from elf_fast.metrics import bleu

    hyps, refs = ["The cat sat on the mat today", "Hello World"], ["the cat sat on a mat today", "hello world !"]
    port = sacrebleu.corpus_bleu(hyps, [refs], lowercase=True, use_effective_order=True).score  # the port's call
    ours = bleu(hyps, refs, **protocol.PORT_BLEU)
    assert ours["score"] == pytest.approx(port, abs=1e-9) and "case:lc|eff:yes" in ours["signature"]
    assert bleu(hyps, refs)["score"] < ours["score"]  # case-sensitive scores these lower: the setting matters


# --------------------------------------------------------------------------- fixtures

def _port_copy(folder, pairs):
    """A save_to_disk folder like the port's eval copies: text columns beside the pre-tokenised ids."""
    ds = datasets.Dataset.from_dict({"input": [c for c, _ in pairs], "target": [t for _, t in pairs],
                                     "condition_input_ids": [[5, 6]] * len(pairs), "input_ids": [[7]] * len(pairs)})
    ds.save_to_disk(str(folder))
    return folder


def _published_folder(tmp_path, monkeypatch, repo_id, task, evaluation=None):
    """A folder named after a published model (as `hf download <repo> --local-dir <name>` leaves it)
    holding a tiny ELF-T; its registry entry is shrunk to the tiny model's lengths and the tiny T5."""
    entry = hub.PUBLISHED[repo_id]
    conditional = task != "unconditional"
    info = replace(entry.info, preset="ELF-T", encoder=str(TINY_T5), max_length=32 if conditional else 48,
                   max_input_length=16 if conditional else None)
    shrunk = replace(entry, info=info, evaluation=evaluation or entry.evaluation)
    monkeypatch.setitem(hub.PUBLISHED, repo_id, shrunk)
    monkeypatch.setitem(hub._BY_CONFIG, entry.port_config, shrunk)  # its training YAML's name finds it too
    folder = tmp_path / entry.name
    tiny_port_checkpoint(folder, max_length=info.max_length)
    return folder


@pytest.fixture
def hub_stand_in(monkeypatch, tmp_path):
    """huggingface_hub / datasets answering from tiny local data (no network here): the port's copies
    as cached dataset repos, the public test sets through datasets.load_dataset. Returns the calls."""
    import huggingface_hub as hf

    calls = []
    copies = {f"embedded-language-flows/{n}": _port_copy(tmp_path / n, PAIRS)
              for n in ("wmt14_de-en_validation_t5", "xsum_validation_t5")}

    def snapshot_download(repo_id, *, repo_type=None, revision=None, cache_dir=None, local_files_only=False, **kw):
        calls.append(("snapshot", repo_id, repo_type, local_files_only))
        assert repo_type == "dataset" and repo_id in copies
        return str(copies[repo_id])

    public = {"wmt/wmt14": datasets.Dataset.from_dict({"translation": [{"de": c, "en": t} for c, t in PAIRS]}),
              "EdinburghNLP/xsum": datasets.Dataset.from_dict({"document": [c for c, _ in PAIRS],
                                                               "summary": [t for _, t in PAIRS],
                                                               "id": ["1", "2", "3"]})}

    real = datasets.load_dataset

    def load_dataset(path, name=None, *, split=None, revision=None, cache_dir=None, **kw):
        if path not in public:  # local files (the json / parquet builders)
            return real(path, name, split=split, revision=revision, cache_dir=cache_dir, **kw)
        calls.append(("load_dataset", path, name, split, revision))
        return public[path]

    monkeypatch.setattr(hf, "snapshot_download", snapshot_download)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub, "_unreachable", lambda: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return calls


def _report(out):
    report = json.loads((out / "report.json").read_text())
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return report, recs


# --------------------------------------------------------------------------- conditional protocols

@needs_bleu
def test_de_en_protocol_scores_the_ports_validation_copy_with_its_bleu(tmp_path, monkeypatch, hub_stand_in):
    folder = _published_folder(tmp_path, monkeypatch, DE_EN, "translation")
    out = tmp_path / "eval"
    assert evaluate.main(["run", "--checkpoint", str(folder), "--limit", "2", "--out-dir", str(out), *FAST]) == 0
    report, recs = _report(out)
    assert (report["protocol"], report["task"], report["split"]) == (DE_EN, "translation", "validation")
    assert report["data"] == "embedded-language-flows/wmt14_de-en_validation_t5" and report["columns"] == ["input", "target"]
    m = report["metrics"]
    assert m["n_samples"] == 2 and 0 <= m["bleu"] <= 100 and "rouge1" not in m
    assert "case:lc|eff:yes" in m["bleu_signature"]  # the port's settings, not sacrebleu's defaults
    assert [r["condition"] for r in recs] == [c for c, _ in PAIRS[:2]]
    assert [r["reference"] for r in recs] == [t for _, t in PAIRS[:2]]
    assert report["sampler"]["cfg"] == 2.0 and report["sampler"]["sampler"] == "ode"  # the port's conditional sampler
    assert ("snapshot", "embedded-language-flows/wmt14_de-en_validation_t5", "dataset", True) in hub_stand_in

    # a folder of another name, with the published model named by --port-config (or its training YAML's name)
    other = tmp_path / "my-copy"
    other.mkdir()
    (other / "checkpoint_7").write_bytes((folder / "checkpoint_7").read_bytes())
    for pc in ("ELF-B-de-en-torch", "train_de-en_ELF-B.yml"):
        out = tmp_path / f"eval_{pc}"
        assert evaluate.main(["run", "--checkpoint", str(other), "--port-config", pc, "--limit", "1",
                              "--out-dir", str(out), *FAST]) == 0
        report, _ = _report(out)
        assert report["protocol"] == DE_EN and report["metrics"]["n_samples"] == 1

    # --split test: the public WMT14 test split, its dotted columns, every row
    out = tmp_path / "eval_test"
    hub_stand_in.clear()
    assert evaluate.main(["run", "--checkpoint", str(folder), "--split", "test", "--out-dir", str(out), *FAST]) == 0
    report, recs = _report(out)
    assert hub_stand_in == [("load_dataset", "wmt/wmt14", "de-en", "test", None)]
    assert report["columns"] == ["translation.de", "translation.en"] and report["metrics"]["n_samples"] == 3
    assert [r["reference"] for r in recs] == [t for _, t in PAIRS]


@needs_rouge
def test_xsum_protocol_scores_rouge(tmp_path, monkeypatch, hub_stand_in):
    folder = _published_folder(tmp_path, monkeypatch, XSUM, "summary")
    out = tmp_path / "eval"
    assert evaluate.main(["run", "--checkpoint", str(folder), "--out-dir", str(out), *FAST]) == 0
    report, recs = _report(out)
    m = report["metrics"]
    assert (report["task"], report["split"], report["data"]) == ("summary", "validation",
                                                                 "embedded-language-flows/xsum_validation_t5")
    assert m["n_samples"] == 3 and {"rouge1", "rouge2", "rougeL"} <= set(m) and "bleu" not in m
    assert all(0 <= m[k] <= 100 for k in ("rouge1", "rouge2", "rougeL"))
    hub_stand_in.clear()
    out = tmp_path / "eval_test"
    assert evaluate.main(["run", "--checkpoint", str(folder), "--split", "test", "--limit", "1", "--out-dir", str(out),
                          *FAST]) == 0
    assert hub_stand_in == [("load_dataset", "EdinburghNLP/xsum", None, "test", "refs/convert/parquet")]
    report, recs = _report(out)
    assert report["columns"] == ["document", "summary"] and [r["reference"] for r in recs] == [PAIRS[0][1]]


@needs_bleu
def test_local_data_overrides_the_protocol_in_the_ports_layouts(tmp_path, monkeypatch, hub_stand_in):
    folder = _published_folder(tmp_path, monkeypatch, DE_EN, "translation")
    # the port's evaluation jsonl: {"input", "output"} per line
    jsonl = tmp_path / "newstest.jsonl"
    jsonl.write_text("".join(json.dumps({"input": c, "output": t}) + "\n" for c, t in PAIRS))
    out = tmp_path / "eval"
    assert evaluate.main(["run", "--checkpoint", str(folder), "--data", str(jsonl), "--out-dir", str(out), *FAST]) == 0
    report, recs = _report(out)
    assert hub_stand_in == []  # the hub was not asked
    assert report["data"] == str(jsonl) and report["split"] == "train" and report["metrics"]["n_samples"] == 3
    assert [r["reference"] for r in recs] == [t for _, t in PAIRS]
    assert "case:lc|eff:yes" in report["metrics"]["bleu_signature"]
    # a saved copy of the hub's WMT14 (dict column): the protocol's dotted columns by name
    saved = tmp_path / "wmt14_saved"
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(
        {"translation": [{"de": c, "en": t} for c, t in PAIRS[:2]]})}).save_to_disk(str(saved))
    assert evaluate.main(["run", "--checkpoint", str(folder), "--data", str(saved), "--columns", "translation.de",
                          "translation.en", "--out-dir", str(out), *FAST]) == 0
    report, recs = _report(out)
    assert report["metrics"]["n_samples"] == 2 and [r["condition"] for r in recs] == [c for c, _ in PAIRS[:2]]
    with pytest.raises(SystemExit, match=r"has the columns \['translation'\].*--columns"):
        evaluate.main(["run", "--checkpoint", str(folder), "--data", str(saved), "--out-dir", str(out), *FAST])
    # two plain parallel text files, line by line (as sacrebleu's test sets come)
    src, ref = tmp_path / "newstest.de", tmp_path / "newstest.en"
    src.write_text("".join(c + "\n" for c, _ in PAIRS))
    ref.write_text("".join(t + "\n" for _, t in PAIRS))
    assert evaluate.main(["run", "--checkpoint", str(folder), "--data", str(src), str(ref), "--limit", "2",
                          "--out-dir", str(out), *FAST]) == 0
    report, recs = _report(out)
    assert report["data"] == [str(src), str(ref)] and report["metrics"]["n_samples"] == 2
    assert [(r["condition"], r["reference"]) for r in recs] == PAIRS[:2] and "bleu" in report["metrics"]
    ref.write_text(PAIRS[0][1] + "\n")
    with pytest.raises(SystemExit, match="has 3 lines but .* has 1"):
        evaluate.main(["run", "--checkpoint", str(folder), "--data", str(src), str(ref), "--out-dir", str(out), *FAST])
    with pytest.raises(SystemExit, match="one path, or two parallel text files"):
        evaluate.main(["run", "--checkpoint", str(folder), "--data", "a", "b", "c"])


# --------------------------------------------------------------------------- offline

@pytest.mark.parametrize("datasets_offline", [False, True], ids=["env-set-late", "datasets-offline"])
def test_offline_and_not_cached_is_one_fast_line_naming_the_data(offline, monkeypatch, capsys, tmp_path,
                                                                 datasets_offline):
    # datasets reads HF_HUB_OFFLINE when imported: both its states are covered
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets_offline)
    for argv, dataset in ((["--checkpoint", "ELF-B-de-en-torch"], "embedded-language-flows/wmt14_de-en_validation_t5"),
                          (["--checkpoint", "ELF-B-xsum-torch"], "embedded-language-flows/xsum_validation_t5"),
                          (["--checkpoint", DE_EN, "--split", "test"], "wmt/wmt14, config de-en, split test"),
                          (["--checkpoint", XSUM, "--split", "test"], "EdinburghNLP/xsum, split test")):
        t0 = time.perf_counter()
        assert run(evaluate.main, ["run", *argv, "--out-dir", str(tmp_path / "o"), "--device", "cpu"]) == 2
        assert time.perf_counter() - t0 < 5
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and dataset in err
        assert "HF_HUB_OFFLINE" in err and "--data PATH" in err


def test_unreachable_hub_is_one_fast_line(monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    for split in ("validation", "test"):
        t0 = time.perf_counter()
        assert run(evaluate.main, ["run", "--checkpoint", DE_EN, "--split", split, "--device", "cpu",
                                   "--out-dir", str(tmp_path / "o")]) == 2
        assert time.perf_counter() - t0 < 5
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "cannot be reached" in err and "--data PATH" in err


# --------------------------------------------------------------------------- Gen. PPL, the port's way

WORDS = ["<|endoftext|>", "[UNK]"] + "a small tool for editing pictures the library debian game with cards of".split()


@pytest.fixture(scope="module")
def port_judge(tmp_path_factory):
    """A tiny random GPT-2 with a GPT-2-like tokenizer: an EOS token that it never adds by itself."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("port_judge")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]").save_pretrained(path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(WORDS), n_positions=16)).save_pretrained(path)
    return str(path)


def test_score_port_is_the_ports_gen_ppl_and_entropy(port_judge):
    """Worked out sample by sample, unpadded: the first token is context only; a sample shorter than the
    longest one also predicts the EOS that pads it; whitespace-only samples are dropped; samples are cut
    to max_length tokens; entropy is over the cut tokens."""
    import math

    import numpy as np

    from elf_fast.metrics import PerplexityScorer

    texts = ["a small tool for editing pictures the library debian game",  # 10 words: cut to 8
             "the library for debian", "   ", "a game with cards of cards", "tool"]
    scorer = PerplexityScorer(port_judge, batch_size=2, max_length=8)
    got = scorer.score_port(texts)
    ids = [[WORDS.index(w) for w in t.split()][:8] for t in texts if t.strip()]
    longest = max(len(t) for t in ids)
    total, count, per = 0.0, 0, []
    for t in ids:
        seq = t + [0] if len(t) < longest else t  # the padding EOS after a shorter sample is predicted
        with torch.no_grad():
            logp = torch.log_softmax(scorer.model(torch.tensor([seq])).logits[0, :-1].double(), -1)
        nll = -logp.gather(-1, torch.tensor(seq[1:])[:, None]).sum().item()
        total, count = total + nll, count + len(seq) - 1
        per.append(nll / (len(seq) - 1))
    assert got["n_tokens"] == count == (7 + 4 + 6 + 1) and got["n_empty"] == 1 and got["n_truncated"] == 1
    assert got["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert [p for p in got["per_sample_nll"] if p is not None] == pytest.approx(per, rel=1e-5)
    assert got["per_sample_nll"][2] is None
    ent = [float(-(p * np.log(p + 1e-10)).sum()) for p in
           (np.unique(t, return_counts=True)[1].astype(np.float32) / len(t) for t in ids)]
    assert got["entropy"] == pytest.approx(sum(ent) / len(ent), rel=1e-6)
    # elf_fast's own convention (a BOS first, no end-of-text term) gives another number: the choice matters
    assert scorer.score(texts)["ppl"] != pytest.approx(got["ppl"], rel=1e-3)
    assert math.isnan(scorer.score_port(["", " "])["ppl"])


# --------------------------------------------------------------------------- unconditional protocol

@pytest.fixture(scope="module")
def t5_judge(tmp_path_factory):
    """A tiny random GPT-2 over the tiny T5 vocabulary (its tokenizer ends each text with EOS)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("t5_judge")
    AutoTokenizer.from_pretrained(TINY_T5).save_pretrained(path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=392, n_positions=32)).save_pretrained(path)
    return str(path)


def test_unconditional_protocol_sets_the_sample_count_length_and_gen_ppl(tmp_path, monkeypatch, t5_judge):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "embedded-language-flows/ELF-B-PD-owt-torch"
    folder = _published_folder(tmp_path, monkeypatch, repo, "unconditional",
                               evaluation=protocol.unconditional(num_samples=3, length=10))
    out = tmp_path / "eval"
    judge = ["--ppl-model", t5_judge, "--ppl-max-length", "32"]
    assert evaluate.main(["run", "--checkpoint", str(folder), *judge, "--out-dir", str(out), *FAST]) == 0
    report, recs = _report(out)
    assert report["protocol"] == repo and report["length"] == 10 and report["metrics"]["n_samples"] == 3
    assert (report["ppl_convention"], report["ppl_dtype"]) == ("port", "bfloat16")  # the port's judge
    assert len(recs) == 3 and report["metrics"]["gen_ppl"] > 0 and report["metrics"]["entropy"] > 0
    s = report["sampler"]
    assert (s["sampler"], s["gamma"], s["w_sc"]) == ("sde", 1.5, 2.5)  # the student's few-step setting
    # the command line wins over the protocol
    assert evaluate.main(["run", "--checkpoint", str(folder), *judge, "--num-samples", "2", "--length", "6",
                          "--ppl-convention", "elf_fast", "--ppl-dtype", "float32", "--out-dir", str(out), *FAST]) == 0
    report, _ = _report(out)
    assert report["length"] == 6 and report["metrics"]["n_samples"] == 2
    assert (report["ppl_convention"], report["ppl_dtype"]) == ("elf_fast", "float32")
    # a judge without an EOS token cannot score the port's way: said before sampling
    from elf_fast.encoder import resolve_encoder_path
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    minilm = tmp_path / "minilm_judge"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=30522, n_positions=32)).save_pretrained(minilm)
    AutoTokenizer.from_pretrained(resolve_encoder_path(None), local_files_only=True).save_pretrained(minilm)
    with pytest.raises(SystemExit, match="needs a tokenizer with an EOS token.*--ppl-convention elf_fast"):
        evaluate.main(["run", "--checkpoint", str(folder), "--ppl-model", str(minilm), "--ppl-max-length", "32",
                       "--out-dir", str(out), *FAST])
    # a sweep of a published model scores the port's way too, and keeps that in its rows
    assert evaluate.main(["sweep", "--checkpoint", str(folder), *judge, "--num-samples", "2", "--length", "6",
                          "--steps", "1", "--samplers", "sde", "--w-sc", "2.5", "--out-dir", str(tmp_path / "sw"),
                          "--device", "cpu", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "sw" / "sweep.jsonl").read_text().splitlines()]
    assert [r["ppl_convention"] for r in rows] == ["port"]

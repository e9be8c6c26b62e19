"""Evaluation metrics (elf_fast.metrics): entropy, generative perplexity, BLEU, ROUGE."""

import math

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from elf_fast.encoder import resolve_encoder_path  # noqa: E402
from elf_fast.metrics import (  # noqa: E402
    PerplexityScorer,
    bleu,
    count_empty,
    mean_entropy,
    rouge,
    unigram_entropy,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "short text",
    "",                                                     # empty -> n_empty
    "A considerably longer sample of text, with several clauses, that needs many more tokens "
    "than the others so that the batch is padded on the right for every other row.",
    "x",                                                    # one token -> counted as empty
    "Debian is a free operating system for your computer.",
    "   ",                                                  # whitespace only -> empty
]


# ----------------------------------------------------------------- entropy
def test_unigram_entropy_known_values():
    assert unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2), abs=1e-12)
    assert unigram_entropy([5]) == 0.0
    assert unigram_entropy([7, 7, 7]) == 0.0
    assert unigram_entropy([]) == 0.0
    assert unigram_entropy([0, 1, 2, 3]) == pytest.approx(math.log(4), abs=1e-12)
    want = -2 * (3 / 8) * math.log(3 / 8) - (2 / 8) * math.log(2 / 8)
    assert unigram_entropy(torch.tensor([3, 9, 3, 9, 3, 9, 4, 4])) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="string"):
        unigram_entropy("abc")


def test_mean_entropy_skips_empty_samples():
    assert mean_entropy([[1, 1, 2, 2], [], [0, 1, 2, 3], [5]]) == pytest.approx((math.log(2) + math.log(4) + 0.0) / 3)
    assert math.isnan(mean_entropy([]))
    assert math.isnan(mean_entropy([[], []]))


# ----------------------------------------------------------------- perplexity
def _save_tiny_lm(path, *, bos: bool, n_positions: int = 64, seed: int = 0):
    """A randomly initialised 2-layer GPT-2 with the MiniLM WordPiece tokenizer, saved to ``path``."""
    tok = transformers.AutoTokenizer.from_pretrained(resolve_encoder_path(None), local_files_only=True)
    if bos:
        tok.add_special_tokens({"bos_token": tok.cls_token, "eos_token": tok.sep_token})
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    # logits of a realistic spread (a random init is nearly uniform over the vocabulary)
    with torch.no_grad():
        model.transformer.wte.weight.normal_(0, 0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_lms(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lm")
    return {bos: _save_tiny_lm(root / ("bos" if bos else "plain"), bos=bos) for bos in (False, True)}


def _reference(path, texts, max_tokens):
    """Per-sample (sum NLL, n predicted) by one unpadded forward per sample, labels shifted by hand."""
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"][:max_tokens]
        if len(ids) < 2:
            out.append(None)
            continue
        seq = torch.tensor(([bos] if bos is not None else []) + ids)
        with torch.no_grad():
            logits = model(input_ids=seq[None]).logits[0]          # (L, V)
        nll = F.cross_entropy(logits[:-1].double(), seq[1:], reduction="sum").item()
        out.append((nll, len(seq) - 1))
    return out


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_perplexity_matches_direct_nll(tiny_lms, bos, batch_size):
    path = tiny_lms[bos]
    scorer = PerplexityScorer(path, batch_size=batch_size, max_length=64)
    assert (scorer.bos_id is not None) == bos
    assert scorer.max_tokens == (63 if bos else 64)
    res = scorer.score(TEXTS)
    ref = _reference(path, TEXTS, scorer.max_tokens)
    nonempty = [r for r in ref if r is not None]
    total, n = sum(r[0] for r in nonempty), sum(r[1] for r in nonempty)
    assert res["n_empty"] == 3 and res["n_samples"] == 4
    assert res["n_tokens"] == n
    assert res["nll"] == pytest.approx(total / n, rel=1e-5)
    # ppl is exp of that mean NLL; exp turns the NLL's float32 summation error (about 1e-5
    # absolute at this untrained LM's NLL of ~16.6) into a relative error of the same size
    assert res["ppl"] == pytest.approx(math.exp(res["nll"]), rel=1e-12)
    assert res["ppl"] == pytest.approx(math.exp(total / n), rel=1e-5 * max(1.0, total / n))
    assert len(res["per_sample_nll"]) == len(TEXTS)
    for got, want in zip(res["per_sample_nll"], ref):
        if want is None:
            assert got is None
        else:
            assert got == pytest.approx(want[0] / want[1], rel=1e-5)
    # the scored tokens are the evaluator's tokens
    toks = scorer.tokenize(TEXTS)
    assert sum(len(t) - (0 if bos else 1) for t in toks if len(t) >= 2) == n
    assert toks[2] == [] and len(toks[4]) == 1


def test_perplexity_truncates_to_context(tiny_lms):
    path = tiny_lms[True]
    scorer = PerplexityScorer(path, batch_size=2, max_length=8)
    long = TEXTS[3]
    assert len(scorer.tokenize([long])[0]) == 7                 # 8 positions: BOS + 7 tokens
    res = scorer.score([long, TEXTS[0]])
    ref = _reference(path, [long, TEXTS[0]], 7)
    assert res["n_truncated"] == 2 and res["n_tokens"] == 14
    assert res["nll"] == pytest.approx((ref[0][0] + ref[1][0]) / 14, rel=1e-5)
    with pytest.warns(UserWarning, match="position limit 64"):
        assert PerplexityScorer(path, max_length=1024).max_length == 64


def test_perplexity_all_empty(tiny_lms):
    res = PerplexityScorer(tiny_lms[True], max_length=64).score(["", "  ", "x"])
    assert res["n_empty"] == 3 and res["n_samples"] == 0 and res["n_tokens"] == 0
    assert math.isnan(res["ppl"]) and res["per_sample_nll"] == [None, None, None]


def test_perplexity_scorer_errors(tmp_path, tiny_lms):
    with pytest.raises(FileNotFoundError, match="does not exist.*elf_fast.judge"):
        PerplexityScorer(str(tmp_path / "no_such_judge"))
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ValueError, match="could not load"):
        PerplexityScorer(str(tmp_path / "not_a_model"))
    with pytest.raises(ValueError, match="batch_size"):
        PerplexityScorer(tiny_lms[True], batch_size=0)
    with pytest.raises(ValueError, match="single string"):
        PerplexityScorer(tiny_lms[True], max_length=64).score("a text")


# ----------------------------------------------------------------- BLEU / ROUGE
HYPS = ["The cat sat on the mat.", "It is a guide to action which ensures that the military obeys.",
        "the package provides a library for parsing", ""]
REFS = ["The cat is on the mat.", "It is a guide to action that ensures that the military will forever heed.",
        "This package contains a library for parsing XML files", "An empty hypothesis."]


def test_bleu_matches_sacrebleu():
    import sacrebleu

    res = bleu(HYPS, REFS)
    assert res["score"] == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert res["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert bleu(HYPS[:1], HYPS[:1])["score"] == pytest.approx(100.0)


def test_rouge_matches_rouge_score():
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    want = {k: 0.0 for k in ("rouge1", "rouge2", "rougeL")}
    for h, r in zip(HYPS, REFS):
        s = sc.score(r, h)
        for k in want:
            want[k] += s[k].fmeasure
    res = rouge(HYPS, REFS)
    assert set(res) == set(want)
    for k in want:
        assert res[k] == pytest.approx(100 * want[k] / len(HYPS), rel=1e-12)


def test_length_mismatch_and_empty():
    for fn in (bleu, rouge):
        with pytest.raises(ValueError, match="3 hypotheses vs 2 references"):
            fn(HYPS[:3], REFS[:2])
        with pytest.raises(ValueError, match="empty"):
            fn([], [])
    assert count_empty(["a", "", "  \n", None, " b "]) == 3
    assert count_empty([]) == 0


def test_word_statistics_against_a_corpus():
    from elf_fast.metrics import CorpusNgrams, word_entropy, words

    assert words("A C++ library, for HTTP/2 (v1.0)!") == ["a", "c", "library", "for", "http", "2", "v1", "0"]
    assert word_entropy(["a a", "b b"]) == pytest.approx(math.log(2))  # pooled: 2 words, equally often
    assert word_entropy(["x y z w"]) == pytest.approx(math.log(4))
    assert math.isnan(word_entropy(["", "!!"]))
    corpus = ["the quick brown fox jumps over the lazy dog today", "a library for parsing files"]
    idx = CorpusNgrams(corpus, orders=(2, 8))
    # bigrams of the text: (library for) (for parsing) (parsing json): 2 of 3 in the corpus
    assert idx.share_found(["Library for parsing JSON"], 2) == pytest.approx(2 / 3)
    # an n-gram never spans two corpus texts: "today a" is no bigram of the corpus
    assert idx.share_found(["today a"], 2) == 0.0
    texts = ["so the quick brown fox jumps over the lazy dog", "quick brown fox jumps over the lazy cat"]
    assert idx.copying(texts, 8) == 0.5  # the first copies an 8-word span, the second does not
    with pytest.raises(ValueError, match="2-grams"):
        CorpusNgrams(corpus, orders=(2,)).copying(texts, 8)
    with pytest.raises(ValueError):
        idx.copying("one string", 8)
    # whole lines: a text copies one when its words are exactly a corpus line's (case and punctuation aside)
    idx = CorpusNgrams(["Library for parsing files\nIt parses files.", "tool"], orders=(2,))
    assert idx.copies_line(["library for parsing files!", "It parses files", "library for parsing",
                            "tool", ""]) == pytest.approx(3 / 5)
    assert idx.copies_line(["parses files"]) == 0.0
    with pytest.raises(ValueError):
        idx.copies_line([])

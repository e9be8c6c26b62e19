"""Evaluation metrics of ELF (docs/method.md §6): generative perplexity, unigram entropy, BLEU, ROUGE.

* Unconditional generation: the decoded samples are re-tokenised with the *evaluator's*
  tokenizer (GPT-2 Large in the paper, context 1024) and scored by :class:`PerplexityScorer`
  (``ppl``: token-weighted corpus perplexity); :func:`mean_entropy` of the evaluator's tokens
  (:meth:`PerplexityScorer.tokenize`) measures diversity (nats; a collapsed, repetitive sample
  has low entropy, so a low Gen. PPL only means something next to a normal entropy).
* WMT14 De-En: :func:`bleu` (sacrebleu corpus BLEU on detokenised text, with its signature).
* XSum: :func:`rouge` (mean ROUGE-1/2/L F1 x 100, ``rouge_score`` with the Porter stemmer).
* Text statistics against a training corpus, judge-free (the built-in model's report,
  docs/study.md): :func:`word_entropy` (pooled word-level unigram entropy), and
  :class:`CorpusNgrams`: the share of a text set's word bigrams that occur in the corpus
  (fluency: real held-out text scores high) and the share of texts that copy an 8-word span
  of it (memorisation).

Machines without GPT-2 Large (no model hub) can score with an offline judge trained by
:mod:`elf_fast.judge` (``PerplexityScorer("judges/gpt2-debian")``); its numbers are *not*
comparable to the paper's, which need GPT-2 Large.

Choices docs/method.md leaves open, written down here:
* every scored sample gets the tokenizer's BOS token (EOS when it has no BOS; nothing when it
  has neither) as its first context token, GPT-2 style (``<|endoftext|>`` for GPT-2), so the
  first real token is predicted too; the sample's own tokens then fill the rest of the
  context, i.e. at most ``max_length - 1`` of them (``max_length`` without a BOS/EOS);
* samples that tokenise to fewer than 2 tokens count as *empty*: they are excluded from the
  perplexity and counted in ``n_empty`` (never dropped silently); ``per_sample_nll`` is None
  for them;
* ``max_length`` above the model's position limit (``n_positions`` /
  ``max_position_embeddings``) is lowered to that limit with a warning (small offline judges
  have short contexts); longer samples are truncated and counted in ``n_truncated``;
* NLLs are accumulated in float64 from float32 log-softmax, whatever the model's dtype.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from elf_fast.encoder import hf_source
from elf_fast.extras import require

JUDGE_HINT = ("pass a local folder of a Hugging Face causal LM instead, e.g. an offline judge trained with "
              "`python -m elf_fast.judge --data data/debian/en --out judges/gpt2-debian` "
              "(its numbers are not comparable to the paper's GPT-2 Large ones)")


# ----------------------------------------------------------------- entropy
def _as_list(tokens) -> list:
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got a tensor of shape {tuple(tokens.shape)}")
        return tokens.tolist()
    if isinstance(tokens, (str, bytes)):
        raise ValueError("tokens must be a sequence of token ids, got a string (tokenise it first)")
    return list(tokens)


def unigram_entropy(tokens: Sequence[int]) -> float:
    """Entropy (nats) of the empirical unigram distribution of one sample's tokens.

    ``H = -sum_v p_v ln p_v`` with ``p_v = count(v) / len(tokens)``; 0.0 for an empty sample
    or one with a single token type. ``tokens``: a list / tuple / 1-D tensor of ids.
    """
    toks = _as_list(tokens)
    n = len(toks)
    if n == 0:
        return 0.0
    counts = Counter(toks)
    if len(counts) == 1:
        return 0.0
    return float(-sum(c / n * math.log(c / n) for c in counts.values()))


def mean_entropy(token_lists: Sequence[Sequence[int]]) -> float:
    """Mean of :func:`unigram_entropy` over the non-empty samples of ``token_lists`` (nan if none)."""
    vals = [unigram_entropy(t) for t in (_as_list(x) for x in token_lists) if len(t) > 0]
    return float(sum(vals) / len(vals)) if vals else float("nan")


# ----------------------------------------------------------------- generative perplexity
class PerplexityScorer:
    """Generative perplexity of texts under a causal LM (GPT-2 Large in the paper).

    ``model_name_or_path``: a local folder (loaded with ``local_files_only=True``) or a hub name
    (only when online or cached). The tokenizer's pad token defaults to its EOS token.
    ``batch_size`` samples are scored per forward, right-padded; ``max_length`` is the context
    (1024 for the paper; lowered to the model's position limit with a warning).

    Attributes: ``model``, ``tokenizer``, ``device``, ``max_length``, ``bos_id`` (the context
    token put before every sample, None if the tokenizer has neither BOS nor EOS),
    ``max_tokens`` (how many of a sample's own tokens are scored: ``max_length - 1`` with a
    BOS, else ``max_length``), ``path``.
    """

    def __init__(self, model_name_or_path: str = "gpt2-large", *, device="cpu", dtype=torch.float32,
                 batch_size: int = 8, max_length: int = 1024):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        name = os.fspath(model_name_or_path)
        if not isinstance(name, str) or not name:
            raise ValueError(f"model_name_or_path must be a non-empty string or path, got {model_name_or_path!r}")
        src, kw = hf_source(name, "model_name_or_path", JUDGE_HINT)
        local = bool(kw)
        try:
            tok = AutoTokenizer.from_pretrained(src, **kw)
            model = AutoModelForCausalLM.from_pretrained(src, **kw)
        except Exception as e:
            if local:
                raise ValueError(f"could not load a causal LM and its tokenizer from the folder {src!r}: "
                                 f"{type(e).__name__}: {e}") from e
            raise FileNotFoundError(
                f"model_name_or_path {name!r} is not a local folder, and loading it from the Hugging Face hub failed "
                f"({type(e).__name__}: {e}); hub names only load when online or cached. {JUDGE_HINT}"
            ) from e
        if tok.pad_token_id is None:
            if tok.eos_token_id is None:
                raise ValueError(f"the tokenizer of {name!r} has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
        self.path = src
        self.tokenizer = tok
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.batch_size = batch_size
        cfg = model.config
        limit = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            warnings.warn(f"max_length {max_length} exceeds the position limit {limit} of {name!r}; using {limit}",
                          stacklevel=2)
            max_length = int(limit)
        self.max_length = max_length
        self.bos_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.max_tokens = max_length - 1 if self.bos_id is not None else max_length

    # ------------------------------------------------------------- tokens
    def _tokenize_full(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, got a single string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if t is not None and not isinstance(t, str):
                raise ValueError(f"texts[{i}] must be a string, got {type(t).__name__}")
        clean = [t if t is not None else "" for t in texts]
        if not clean:
            return []
        return [list(x) for x in self.tokenizer(clean, add_special_tokens=False, verbose=False)["input_ids"]]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """The evaluator's tokens of each text: no special tokens, truncated to the ``max_tokens``
        that fit the context next to the BOS (``max_length - 1``; ``max_length`` without one).
        These are exactly the tokens :meth:`score` predicts, and what entropy is computed over."""
        return [ids[:self.max_tokens] for ids in self._tokenize_full(texts)]

    # ------------------------------------------------------------- scoring
    @torch.no_grad()
    def score(self, texts: Sequence[str]) -> dict:
        """Token-weighted corpus perplexity of ``texts``.

        Each non-empty sample (>= 2 evaluator tokens) is scored as ``[BOS] + tokens`` (see the
        module doc) with ``tokens`` truncated to ``max_tokens``; every token of the sample is
        predicted from the ones before it (without a BOS/EOS token the first is only context).
        With ``N_i`` predicted tokens of sample ``i`` and ``S_i`` the sum of their negative
        log-likelihoods (nats)::

            nll = sum_i S_i / sum_i N_i        ppl = exp(nll)

        over the non-empty samples, i.e. the perplexity of the whole corpus (long samples weigh
        more), not a mean of per-sample perplexities.

        Returns a dict: ``ppl``, ``nll``, ``n_tokens`` (sum N_i), ``n_samples`` (scored),
        ``n_empty`` (samples with < 2 tokens, excluded), ``per_sample_nll`` (``S_i / N_i`` in the
        order of ``texts``, None for empty samples), ``n_truncated`` (samples longer than
        ``max_tokens``), ``max_length``. ``ppl`` / ``nll`` are nan when every sample is empty.
        """
        full = self._tokenize_full(texts)
        n_trunc = sum(len(ids) > self.max_tokens for ids in full)
        toks = [ids[:self.max_tokens] for ids in full]
        prefix = [self.bos_id] if self.bos_id is not None else []
        per: list[float | None] = [None] * len(toks)
        keep = [i for i, t in enumerate(toks) if len(t) >= 2]
        keep.sort(key=lambda i: -len(toks[i]))         # similar lengths per batch: less padding
        total_nll, total_n = 0.0, 0
        pad = self.tokenizer.pad_token_id
        for b in range(0, len(keep), self.batch_size):
            idx = keep[b:b + self.batch_size]
            seqs = [prefix + toks[i] for i in idx]
            L = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), L), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), L), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
                mask[r, :len(s)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits        # (B, L, V)
            logp = F.log_softmax(logits[:, :-1].float(), dim=-1)                  # (B, L-1, V)
            tgt = ids[:, 1:]                                                      # (B, L-1)
            tok_nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)            # (B, L-1)
            valid = mask[:, 1:].bool()                                            # padding excluded
            tok_nll = torch.where(valid, tok_nll, torch.zeros_like(tok_nll)).double()
            sums = tok_nll.sum(dim=1).cpu()
            counts = valid.sum(dim=1).cpu()
            for r, i in enumerate(idx):
                s, n = float(sums[r]), int(counts[r])
                per[i] = s / n
                total_nll += s
                total_n += n
        nll = total_nll / total_n if total_n else float("nan")
        return {"ppl": math.exp(nll) if total_n else float("nan"), "nll": nll, "n_tokens": total_n,
                "n_samples": len(keep), "n_empty": len(toks) - len(keep), "per_sample_nll": per,
                "n_truncated": n_trunc, "max_length": self.max_length}


    @torch.no_grad()
    def score_port(self, texts: Sequence[str], *, progress: bool = False) -> dict:
        """Gen. PPL and entropy exactly as the official port computes them
        (``src/utils/metrics_utils.py``, ``Metrics.record_generative_perplexity``), for comparison
        with its numbers. Differences from :meth:`score`:

        * whitespace-only samples are dropped first (``n_empty``);
        * all samples are tokenised in one call, as the tokenizer does by default (GPT-2 adds no
          special token), cut to ``max_length`` tokens and right-padded with the EOS id to the
          longest of them; no BOS is put in front, so each sample's first token is only context;
        * the predicted positions are the port's ``valid_tokens``: every non-EOS token after the
          first, plus the positions up to the second EOS (for a sample without EOS in its text:
          its first padding EOS, so a sample shorter than the longest one also scores an
          end-of-text prediction; a token between the first and the second EOS counts twice);
        * the entropy of a sample is over its (cut) tokens, in float32 with the port's ``+1e-10``;
          the mean over the non-empty samples.

        Batches of ``batch_size`` samples, in order. Returns the keys of :meth:`score` (``per_sample_nll``
        for the non-empty samples, None for the empty ones) and ``entropy``. ValueError when the
        tokenizer has no EOS token (the port's masks need one)."""
        import numpy as np
        from tqdm import tqdm

        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"the port's Gen. PPL needs a tokenizer with an EOS token; {self.path!r} has none")
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, got a single string")
        texts = list(texts)
        keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        per: list[float | None] = [None] * len(texts)
        empty = {"ppl": float("nan"), "nll": float("nan"), "n_tokens": 0, "n_samples": 0, "n_empty": len(texts),
                 "per_sample_nll": per, "n_truncated": 0, "max_length": self.max_length, "entropy": float("nan")}
        if not keep:
            return empty
        full = [list(x) for x in self.tokenizer([texts[i] for i in keep], verbose=False)["input_ids"]]
        n_trunc = sum(len(ids) > self.max_length for ids in full)
        toks = [ids[:self.max_length] for ids in full]
        L = max(len(t) for t in toks)
        ids = torch.full((len(toks), L), eos, dtype=torch.long)                   # (N, L), right-padded with EOS
        mask = torch.zeros((len(toks), L), dtype=torch.long)
        for r, t in enumerate(toks):
            ids[r, :len(t)] = torch.tensor(t, dtype=torch.long)
            mask[r, :len(t)] = 1
        total_nll, total_n = 0.0, 0.0
        for b in tqdm(range(0, len(toks), self.batch_size), desc="scoring", unit="batch", disable=not progress):
            x, m = ids[b:b + self.batch_size].to(self.device), mask[b:b + self.batch_size].to(self.device)
            logits = self.model(input_ids=x, attention_mask=m).logits[:, :-1]     # (B, L-1, V)
            nll = torch.logsumexp(logits.float(), dim=-1) - logits.gather(-1, x[:, 1:, None]).squeeze(-1).float()
            is_eos = x == eos
            first_eos = is_eos.int().cumsum(dim=-1) == 1
            valid = (first_eos[:, 1:].int() + (~is_eos)[:, 1:].int()).double()    # (B, L-1), the port's weights
            sums = (nll.double() * valid).sum(dim=1).cpu()
            counts = valid.sum(dim=1).cpu()
            for r in range(x.shape[0]):
                s, n = float(sums[r]), float(counts[r])
                per[keep[b + r]] = s / n if n > 0 else None
                total_nll += s
                total_n += n
        ents = []
        for t in toks:
            _, counts = np.unique(np.asarray(t), return_counts=True)
            probs = counts.astype(np.float32) / counts.sum()
            ents.append(float(-np.sum(probs * np.log(probs + 1e-10))))
        nll = total_nll / total_n if total_n else float("nan")
        return {"ppl": math.exp(nll) if total_n else float("nan"), "nll": nll, "n_tokens": int(total_n),
                "n_samples": len(keep), "n_empty": len(texts) - len(keep), "per_sample_nll": per,
                "n_truncated": n_trunc, "max_length": self.max_length, "entropy": sum(ents) / len(ents)}


# ----------------------------------------------------------------- conditional tasks
def _check_pairs(hypotheses, references) -> tuple[list[str], list[str]]:
    for name, v in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(v, str):
            raise ValueError(f"{name} must be a list of strings, got a single string")
    hyps, refs = list(hypotheses), list(references)
    if len(hyps) != len(refs):
        raise ValueError(f"hypotheses and references differ in length: {len(hyps)} hypotheses vs {len(refs)} references")
    if not hyps:
        raise ValueError("hypotheses and references are empty; need at least one pair")
    for name, v in (("hypotheses", hyps), ("references", refs)):
        for i, t in enumerate(v):
            if not isinstance(t, str):
                raise ValueError(f"{name}[{i}] must be a string, got {type(t).__name__}")
    return hyps, refs


def bleu(hypotheses: list[str], references: list[str], *, tokenize: str | None = None,
         lowercase: bool = False, effective_order: bool = False) -> dict:
    """sacrebleu corpus BLEU of detokenised ``hypotheses`` against one reference each.

    Returns ``{"score": float (0-100), "signature": str}``, the signature being sacrebleu's
    standard one (``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:...``) to report next
    to the number. ``tokenize`` / ``lowercase`` / ``effective_order`` are passed to
    ``sacrebleu.metrics.BLEU`` (default: its 13a tokenizer, case-sensitive, as for WMT14 De-En;
    the official port scores lower-cased with the effective order, ``case:lc|eff:yes``:
    :data:`elf_fast.protocol.PORT_BLEU`).
    """
    BLEU = require("sacrebleu.metrics", "BLEU").BLEU

    hyps, refs = _check_pairs(hypotheses, references)
    metric = BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=effective_order)
    res = metric.corpus_score(hyps, [refs])
    return {"score": float(res.score), "signature": str(metric.get_signature())}


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(hypotheses: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1 / ROUGE-2 / ROUGE-L F1 x 100 over the pairs (``rouge_score`` with
    ``use_stemmer=True``; its default tokenizer lower-cases and keeps ``[a-z0-9]`` words).
    Returns ``{"rouge1", "rouge2", "rougeL"}`` floats."""
    rouge_scorer = require("rouge_score.rouge_scorer", "ROUGE")

    hyps, refs = _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for h, r in zip(hyps, refs):
        s = scorer.score(r, h)                   # score(target, prediction)
        for k in ROUGE_TYPES:
            sums[k] += s[k].fmeasure
    return {k: 100.0 * v / len(hyps) for k, v in sums.items()}


def count_empty(texts: Sequence[str]) -> int:
    """How many of ``texts`` are empty, whitespace-only or None."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got a single string")
    return sum(1 for t in texts if t is None or not str(t).strip())


# ----------------------------------------------------------------- text against a corpus
_WORD = None


def words(text: str) -> list[str]:
    """Lower-cased ``[a-z0-9]+`` runs of ``text`` (punctuation and case dropped, as ROUGE's
    tokenizer does), so a detokenised WordPiece sample and the raw corpus split alike."""
    global _WORD
    if _WORD is None:
        import re

        _WORD = re.compile(r"[a-z0-9]+")
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def word_entropy(texts: Sequence[str]) -> float:
    """Entropy (nats) of the unigram distribution of all ``texts``' words pooled (one
    distribution over the whole set, so it measures the vocabulary a model uses across samples;
    NaN when there are no words)."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got a single string")
    counts = Counter(w for t in texts for w in words(t))
    total = sum(counts.values())
    if not total:
        return float("nan")
    return -sum(c / total * math.log(c / total) for c in counts.values())


class CorpusNgrams:
    """The word n-grams (n in ``orders``) of a corpus, to ask how much of a text set the corpus
    contains. Keeps 64-bit hashes (blake2b of the joined words), so a few million n-grams take
    a few hundred MB; a hash collision can only count a missing n-gram as found (rate ~ n^2 / 2^64).
    Texts are split into words by :func:`words`; an n-gram never spans two corpus texts. Each
    corpus line (a text split at newlines) is kept whole too, for :meth:`copies_line`."""

    def __init__(self, texts, orders: Sequence[int] = (2, 8)):
        orders = tuple(int(n) for n in orders)
        if not orders or min(orders) < 1:
            raise ValueError(f"orders must be positive n-gram sizes, got {orders!r}")
        self.orders = orders
        self.sets: dict[int, set[int]] = {n: set() for n in orders}
        self.lines: set[int] = set()
        self.n_texts = 0
        for t in texts:
            by_line = [words(line) for line in t.split("\n")]  # words() never spans a newline
            w = [x for line in by_line for x in line]
            self.n_texts += 1
            for n in orders:
                self.sets[n].update(self._hashes(w, n))
            self.lines.update(map(self._whole, by_line))

    @staticmethod
    def _digest(s: str) -> int:
        import hashlib

        return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")

    @classmethod
    def _whole(cls, w: list[str]) -> int:
        return cls._digest("\x00" + " ".join(w))  # the prefix keeps whole lines apart from n-grams

    @classmethod
    def _hashes(cls, w: list[str], n: int):
        for i in range(len(w) - n + 1):
            yield cls._digest(" ".join(w[i:i + n]))

    def _order(self, n: int) -> set[int]:
        if n not in self.sets:
            raise ValueError(f"this index holds {', '.join(map(str, self.orders))}-grams, not {n}-grams")
        return self.sets[n]

    def share_found(self, texts: Sequence[str], n: int = 2) -> float:
        """Share of all ``texts``' word n-grams (pooled, with repeats) found in the corpus; NaN
        when the texts have none."""
        have = self._order(n)
        grams = [h for t in texts for h in self._hashes(words(t), n)]
        return sum(h in have for h in grams) / len(grams) if grams else float("nan")

    def copies_line(self, texts: Sequence[str]) -> float:
        """Share of ``texts`` whose words are, all and in order, those of one corpus line (a
        verbatim copy of, say, a training synopsis; a text without words never counts)."""
        if isinstance(texts, str) or not len(texts):
            raise ValueError("texts must be a non-empty list of strings")
        return sum(bool(w) and self._whole(w) in self.lines for w in map(words, texts)) / len(texts)

    def copying(self, texts: Sequence[str], n: int = 8) -> float:
        """Share of ``texts`` that contain at least one word n-gram of the corpus (a copied span)."""
        if isinstance(texts, str) or not len(texts):
            raise ValueError("texts must be a non-empty list of strings")
        have = self._order(n)
        return sum(any(h in have for h in self._hashes(words(t), n)) for t in texts) / len(texts)

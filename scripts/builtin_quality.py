"""How much a built-in model's samples read like Debian package descriptions (docs/study.md).

For each checkpoint given (default: the shipped built-in model) and for real held-out text, one
row of:

* Gen. PPL and mean per-sample token entropy under the offline judge (``--judge``, a folder made
  by ``python -m elf_fast.judge``; skipped when absent);
* word-level unigram entropy, pooled over the sample set (elf_fast.metrics.word_entropy);
* the share of the samples' word bigrams found in the training corpus, the share of samples
  that copy an 8-word span of it, and the share that are, word for word, a line of it (a
  training synopsis, say) (elf_fast.metrics.CorpusNgrams);
* the share of empty samples (an EOS as the first token: the sampler cuts a text at its first EOS).

Samples are drawn with each checkpoint's recommended sampler (what ``python -m elf_fast.sample``
uses), ``--num-samples`` of its default length, seed ``--seed``. Real text: ``--num-samples``
validation descriptions (seeded choice) cut to the same number of MiniLM tokens and detokenised
as the sampler detokenises; for a model trained on first lines only (``data.first_line``, the
third built-in run's synopses), their first lines, those that fit its length (as training
kept them), whole. One real row per kind of text the checkpoints were trained on.

    python scripts/builtin_quality.py --checkpoint old.safetensors new.safetensors \\
        --corpus data/debian/en --judge judges/gpt2-debian --out docs/study/builtin_quality.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from elf_fast.data import first_line_of, load_text_dataset
from elf_fast.generator import Generator, builtin_checkpoint
from elf_fast.metrics import CorpusNgrams, PerplexityScorer, count_empty, mean_entropy, word_entropy

COLUMNS = ("name", "sampler", "gen_ppl", "entropy", "word_entropy", "bigrams_in_corpus", "copies_8gram", "copies_line",
           "mean_words", "empty")


def real_texts(corpus: str, tokenizer, n: int, length: int, seed: int, first_line: bool = False) -> list[str]:
    ds = load_text_dataset(corpus, "validation")
    texts = ds["text"]
    if first_line:  # the synopses that fit length - 1 tokens and an EOS (what data.pack=false keeps;
        # packing keeps every one; at length 64 all 1,262 validation synopses fit, at 24 all but 7)
        texts = [first_line_of(t) for t in texts]
        texts = [t for t in texts if t.strip() and len(tokenizer(t, add_special_tokens=False)["input_ids"]) < length]
    rows = [texts[i] for i in random.Random(seed).sample(range(len(texts)), min(n, len(texts)))]
    return [tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][:length], skip_special_tokens=True)
            for t in rows]


def row(name: str, texts: list[str], index: CorpusNgrams, judge: PerplexityScorer | None) -> dict:
    r = {"name": name, "n": len(texts), "word_entropy": word_entropy(texts),
         "bigrams_in_corpus": index.share_found(texts, 2), "copies_8gram": index.copying(texts, 8),
         "copies_line": index.copies_line(texts), "mean_words": sum(len(t.split()) for t in texts) / len(texts),
         "empty": count_empty(texts) / len(texts)}
    if judge is not None:
        s = judge.score(texts)
        r.update(gen_ppl=s["ppl"], entropy=mean_entropy(judge.tokenize(texts)))
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", nargs="*", default=None, help="checkpoints (default: the built-in model)")
    ap.add_argument("--corpus", default="data/debian/en", help="the training corpus (train split) and held-out text "
                                                                "(validation split)")
    ap.add_argument("--judge", default="judges/gpt2-debian")
    ap.add_argument("--num-samples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", choices=("ode", "sde"), default=None,
                    help="override the checkpoints' recommended sampler (same steps and other settings)")
    ap.add_argument("--out", default=None, help="write the rows and the samples here (JSON)")
    args = ap.parse_args(argv)

    ckpts = args.checkpoint or [str(builtin_checkpoint())]
    t0 = time.perf_counter()
    index = CorpusNgrams(load_text_dataset(args.corpus, "train")["text"], orders=(2, 8))
    print(f"corpus index: {index.n_texts} texts, {len(index.sets[2])} bigrams, {len(index.sets[8])} 8-grams "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    judge = PerplexityScorer(args.judge) if Path(args.judge).is_dir() else None
    if judge is None:
        print(f"no judge at {args.judge}: Gen. PPL and entropy left out", file=sys.stderr)
    rows, samples, kinds, tok = [], {}, {}, None
    for c in ckpts:
        gen = Generator.from_checkpoint(c)
        tok = gen.tokenizer
        data_cfg = (gen.header.extra.get("train_config") or {}).get("data") or {}
        kinds[(gen.default_length, bool(data_cfg.get("first_line")))] = None
        cfg = gen.sampler(**({"sampler": args.sampler} if args.sampler else {}))
        texts = [r["text"] for r in gen.generate(args.num_samples, seed=args.seed, progress=True, desc=Path(c).name,
                                                 sampler=cfg)]
        samples[c] = texts
        rows.append(row(c, texts, index, judge) | {"step": (gen.header.extra.get("built_in") or {}).get("step"),
                                                   "sampler": f"{cfg.steps}-step {cfg.sampler}"})
    for length, first_line in kinds:
        real = real_texts(args.corpus, tok, args.num_samples, length, args.seed, first_line)
        name = (f"real validation synopses (< {length} tokens)" if first_line
                else f"real validation text ({length} tokens)")
        samples[name] = real
        rows.append(row(name, real, index, judge))

    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "-")) for k in COLUMNS)
              + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "samples": samples, "seed": args.seed,
                                              "judge": args.judge if judge else None}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

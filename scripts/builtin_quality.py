"""How much a built-in model's samples read like Debian package descriptions (docs/study.md).

For each checkpoint given (default: the shipped built-in model) and for real held-out text, one
row of:

* Gen. PPL and mean per-sample token entropy under the offline judge (``--judge``, a folder made
  by ``python -m elf_fast.judge``; skipped when absent);
* word-level unigram entropy, pooled over the sample set (elf_fast.metrics.word_entropy);
* the share of the samples' word bigrams found in the training corpus, and the share of samples
  that copy an 8-word span of it (elf_fast.metrics.CorpusNgrams).

Samples are drawn with each checkpoint's recommended sampler (what ``python -m elf_fast.sample``
uses), ``--num-samples`` of its default length, seed ``--seed``. Real text: ``--num-samples``
validation descriptions (seeded choice) cut to the same number of MiniLM tokens and detokenised
as the sampler detokenises.

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

from elf_fast.data import load_text_dataset
from elf_fast.generator import Generator, builtin_checkpoint
from elf_fast.metrics import CorpusNgrams, PerplexityScorer, mean_entropy, word_entropy

COLUMNS = ("name", "sampler", "gen_ppl", "entropy", "word_entropy", "bigrams_in_corpus", "copies_8gram", "mean_words")


def real_texts(corpus: str, tokenizer, n: int, length: int, seed: int) -> list[str]:
    ds = load_text_dataset(corpus, "validation")
    rows = [ds[i]["text"] for i in random.Random(seed).sample(range(len(ds)), min(n, len(ds)))]
    return [tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][:length], skip_special_tokens=True)
            for t in rows]


def row(name: str, texts: list[str], index: CorpusNgrams, judge: PerplexityScorer | None) -> dict:
    r = {"name": name, "n": len(texts), "word_entropy": word_entropy(texts),
         "bigrams_in_corpus": index.share_found(texts, 2), "copies_8gram": index.copying(texts, 8),
         "mean_words": sum(len(t.split()) for t in texts) / len(texts)}
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
    rows, samples, length, tok = [], {}, None, None
    for c in ckpts:
        gen = Generator.from_checkpoint(c)
        length, tok = gen.default_length, gen.tokenizer
        cfg = gen.sampler(**({"sampler": args.sampler} if args.sampler else {}))
        texts = [r["text"] for r in gen.generate(args.num_samples, seed=args.seed, progress=True, desc=Path(c).name,
                                                 sampler=cfg)]
        samples[c] = texts
        rows.append(row(c, texts, index, judge) | {"step": (gen.header.extra.get("built_in") or {}).get("step"),
                                                   "sampler": f"{cfg.steps}-step {cfg.sampler}"})
    real = real_texts(args.corpus, tok, args.num_samples, length, args.seed)
    samples["real"] = real
    rows.append(row(f"real validation text ({length} tokens)", real, index, judge))

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

"""``python -m elf_fast.evaluate``: score ELF checkpoints with the paper's protocol (docs/method.md §6).

Subcommands (``run`` is the default when none is given):

* ``run``, unconditional checkpoint: sample ``--num-samples`` texts (default 1000), then report
  the generative perplexity under ``--ppl-model`` (default GPT-2 Large; a local folder works
  offline, e.g. a judge from ``python -m elf_fast.judge``), the mean per-sample unigram entropy
  (nats) of the evaluator's tokens, and the number of empty samples.
* ``run``, conditional checkpoint (a conditional ``data.task`` in its header): generate one target per
  condition of ``--data`` (split ``--split``, first ``--limit`` rows) with CFG (defaults: 64-step
  ODE, cfg 2, w_sc 1) and score BLEU (task translation) or ROUGE-1/2/L (task summary) against
  the references.
* ``run --checkpoint <published model>`` (a name of :data:`elf_fast.hub.PUBLISHED`, or a folder named
  after one): that model's own protocol, as the official port scores it
  (:mod:`elf_fast.protocol`): 1,000 samples of 1,024 tokens (the distilled student: 500) for Gen.
  PPL and entropy; for the conditional ones, without ``--data``, the first 1,000 rows of the
  port's copy of the validation set (``--split test``: the public test split, all rows) loaded
  through ``datasets``, scored with the port's BLEU (lower-cased, effective order) or ROUGE-1/2/L.
  Offline and not cached: one line naming the dataset and the ``--data`` alternative, before the
  model is loaded. ``--data`` always overrides (the protocol's columns, or the port's ``input`` /
  ``target`` or ``input`` / ``output``; ``--columns`` names others; or two plain text files,
  conditions and references line by line).
* ``run --texts samples.jsonl``: score existing samples (field ``text``; ``reference`` when
  present for BLEU / ROUGE) without sampling.
* ``sweep``: one unconditional run per (steps, sampler, gamma, w_sc) setting, the same seed for
  each (default steps 1 2 4 8 16 32 64: few-step students to the teacher's 64); writes
  ``sweep.jsonl`` / ``sweep.md`` and the plots ``frontier.png`` (Gen. PPL vs entropy) and
  ``ppl_vs_steps.png``. Settings already in ``sweep.jsonl`` are skipped, so a killed sweep
  continues where it stopped.

``run`` writes ``report.json``, ``report.md`` and ``samples.jsonl`` into ``--out-dir`` and prints
the Markdown table.

Examples::

    python -m elf_fast.evaluate --checkpoint runs/debian/latest.safetensors --num-samples 1000 \\
        --steps 32 --sampler sde --gamma 1.5 --sc-cfg 3 --length 1024
    python -m elf_fast.evaluate run --checkpoint ckpt/wmt.safetensors --data wmt14_de_en/ --split test
    python -m elf_fast.evaluate run --texts eval_out/samples.jsonl --ppl-model judges/gpt2-debian
    python -m elf_fast.evaluate run --checkpoint ELF-B-owt-torch          # a published model: its protocol
    python -m elf_fast.evaluate run --checkpoint ELF-B-de-en-torch --split test   # the paper's test set
    python -m elf_fast.evaluate run --checkpoint ELF-B-xsum-torch --data xsum_val.jsonl  # local files instead
    python -m elf_fast.evaluate sweep --checkpoint ckpt/ --steps 8 16 32 64 --samplers ode sde --w-sc 1 2 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from elf_fast import validate
from elf_fast.cli import (ArgumentParser, add_compile_arg, add_generator_args, add_sampler_args, load_generator,
                          resolve_device_arg, sampler_from_args)
from elf_fast.protocol import DATA_COLUMNS
from elf_fast.report import fmt, plot_sweep, report_markdown, sweep_markdown, write_jsonl
from elf_fast.sampling import SamplerConfig

#: unconditional samples of a run when neither --num-samples nor a published model's protocol says
DEFAULT_SAMPLES = 1000

#: a sweep's default step counts: the few-step students' 1, 2, 4 (the port's few-step configs sweep
#: 1-32) and the many-step teachers' counts
SWEEP_STEPS = (1, 2, 4, 8, 16, 32, 64)

#: a sweep's rows are comparable (and resumable) only when these agree
SWEEP_CONTEXT = ("checkpoint", "num_samples", "seed", "length", "grid", "ppl_model", "ppl_convention")

#: how Gen. PPL is computed (Scorer): elf_fast's (a BOS before each sample) or the official port's
PPL_CONVENTIONS = ("elf_fast", "port")


# --------------------------------------------------------------------------- scoring

class Scorer:
    """The PPL judge, loaded once and shared by every setting of a sweep. ``convention``: ``elf_fast``
    (:meth:`~elf_fast.metrics.PerplexityScorer.score`, a BOS before every sample) or ``port`` (the
    official port's computation, :meth:`~elf_fast.metrics.PerplexityScorer.score_port`)."""

    def __init__(self, model_name_or_path: str, *, device: torch.device, dtype: str = "float32",
                 batch_size: int = 8, max_length: int = 1024, convention: str = "elf_fast"):
        from elf_fast.metrics import PerplexityScorer

        if convention not in PPL_CONVENTIONS:
            raise ValueError(f"convention must be one of {PPL_CONVENTIONS}, got {convention!r}")
        self.name = model_name_or_path
        self.batch_size = batch_size
        self.convention = convention
        try:
            self.ppl = PerplexityScorer(model_name_or_path, device=str(device), dtype=getattr(torch, dtype),
                                        batch_size=batch_size, max_length=max_length)
        except (OSError, ValueError) as e:  # a missing folder / uncached hub name, or an unusable one
            raise SystemExit(f"error: --ppl-model: {e}") from e
        if convention == "port" and self.ppl.tokenizer.eos_token_id is None:  # said before any sampling
            raise SystemExit(f"error: --ppl-model {model_name_or_path!r}: the port's Gen. PPL needs a tokenizer with an "
                             "EOS token (GPT-2's); this one has none: pass --ppl-convention elf_fast")

    def perplexity(self, texts: list[str], *, progress: bool = True) -> dict:
        """Gen. PPL, token-weighted over all samples, scored in chunks behind a progress bar, and the
        mean per-sample unigram entropy of the evaluator's tokens."""
        from tqdm import tqdm

        from elf_fast.metrics import mean_entropy

        if self.convention == "port":  # one call: the port pads every sample to the longest of all
            r = self.ppl.score_port(texts, progress=progress)
            return {"gen_ppl": r["ppl"] if r["n_tokens"] else None, "gen_nll": r["nll"] if r["n_tokens"] else None,
                    "ppl_tokens": r["n_tokens"], "ppl_excluded": r["n_empty"], "ppl_truncated": r["n_truncated"],
                    "ppl_context": r["max_length"], "entropy": r["entropy"], "per_sample_nll": r["per_sample_nll"]}
        # PerplexityScorer.score's nll is token-weighted (sum of NLLs / n_tokens), so chunks combine exactly
        chunk = self.batch_size * 4
        total_nll, n_tokens, excluded, truncated, per_sample = 0.0, 0, 0, 0, []
        with tqdm(total=len(texts), desc="scoring", unit="sample", disable=not progress, file=sys.stderr) as bar:
            for s in range(0, len(texts), chunk):
                part = texts[s:s + chunk]
                r = self.ppl.score(part)
                if r["n_tokens"]:
                    total_nll += float(r["nll"]) * int(r["n_tokens"])
                    n_tokens += int(r["n_tokens"])
                excluded += int(r.get("n_empty", 0))
                truncated += int(r.get("n_truncated", 0))
                per_sample += list(r.get("per_sample_nll") or [None] * len(part))
                bar.update(len(part))
        nll = total_nll / n_tokens if n_tokens else None
        return {"gen_ppl": math.exp(nll) if nll is not None else None, "gen_nll": nll, "ppl_tokens": n_tokens,
                "ppl_excluded": excluded, "ppl_truncated": truncated,
                "ppl_context": getattr(self.ppl, "max_length", None),
                "entropy": mean_entropy(self.ppl.tokenize(texts)), "per_sample_nll": per_sample}


def reference_metrics(texts: list[str], refs: list[str], metric: str, bleu_settings: dict | None = None) -> dict:
    """BLEU and / or ROUGE-1/2/L of ``texts``; ``bleu_settings`` go to :func:`elf_fast.metrics.bleu`
    (a published model's protocol: the port's lower-cased, effective-order BLEU)."""
    from elf_fast.metrics import bleu, rouge

    out = {}
    if metric in ("bleu", "both"):
        b = bleu(texts, refs, **(bleu_settings or {}))
        out.update(bleu=b["score"], bleu_signature=str(b["signature"]))
    if metric in ("rouge", "both"):
        out.update(rouge(texts, refs))
    return out


def _finite(v):
    """JSON has no NaN / inf: write null instead."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def read_texts(path: str) -> tuple[list[str], list[str] | None]:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"error: --texts file {str(p)!r} does not exist")
    texts, refs = [], []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {str(p)!r} line {i} is not JSON: {e}") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise SystemExit(f"error: {str(p)!r} line {i} has no string field 'text'")
        texts.append(rec["text"])
        refs.append(rec.get("reference"))
    if not texts:
        raise SystemExit(f"error: --texts file {str(p)!r} holds no samples")
    have = [r is not None for r in refs]
    if any(have) and not all(have):
        raise SystemExit(f"error: {str(p)!r}: {have.count(False)} of {len(refs)} samples lack a 'reference'")
    return texts, ([str(r) for r in refs] if all(have) else None)


def read_parallel_text(source: str, target: str, limit: int | None) -> tuple[list[str], list[str]]:
    """Conditions and references from two plain UTF-8 text files, one per line, line i with line i."""
    sides = []
    for path in (source, target):
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"error: --data: {path!r} is not a file")
        try:
            sides.append(p.read_text(encoding="utf-8").splitlines())
        except UnicodeDecodeError as e:
            raise SystemExit(f"error: --data: {path!r} is not UTF-8 text ({e.reason})") from e
    if len(sides[0]) != len(sides[1]):
        raise SystemExit(f"error: --data: {source!r} has {len(sides[0])} lines but {target!r} has {len(sides[1])}; "
                         "parallel files pair line i with line i")
    if not sides[0]:
        raise SystemExit(f"error: --data: {source!r} is empty")
    n = min(limit, len(sides[0])) if limit else len(sides[0])
    return sides[0][:n], sides[1][:n]


def read_conditional_data(source: str, split: str | None, limit: int | None,
                          columns=(("condition", "target"),)) -> tuple[list[str], list[str], str]:
    """Conditions and references of ``--data`` (a local file or folder, or a hub name when online):
    split ``split`` (None: its only split), first ``limit`` rows, the first pair of ``columns``
    (condition, reference; dotted names read a field of a dict column) that it has; and the split read."""
    from elf_fast.data import load_text_dataset
    from elf_fast.protocol import pairs_from

    try:
        ds = load_text_dataset(source, split)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: --data: {e}") from e
    if split is None:
        if len(ds) != 1:
            raise SystemExit(f"error: --data {source!r} has the splits {sorted(ds)}: pick one with --split")
        split, ds = next(iter(ds.items()))
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    try:
        conditions, refs, _ = pairs_from(ds, columns, f"--data {source!r} split {split!r}")
    except ValueError as e:
        raise SystemExit(f"error: {e}; conditional data needs a condition and a target column") from e
    if not conditions:
        raise SystemExit(f"error: --data {source!r} split {split!r} is empty")
    return conditions, refs, split


def published_of(args):
    """The published model ``--checkpoint`` names (its repo id or short name, or a folder named after it
    or a hub-cache copy of it), else the one ``--port-config`` names (by its name or the name of its
    training YAML, not a file); None for any other checkpoint."""
    from elf_fast import hub

    name = args.checkpoint
    if name is not None:
        local = Path(os.path.expanduser(name))
        if local.exists():
            found = hub.published_for_folder(local if local.is_dir() else local.parent)
        else:
            found = hub.lookup(name)
        if found is not None:
            return found
    pc = args.port_config
    if not pc or os.path.isfile(os.path.expanduser(pc)):  # a YAML file of one's own: its own settings
        return None
    return hub.lookup(pc) or hub._BY_CONFIG.get(Path(pc).name)


def protocol_data(args, published) -> tuple[list[str], list[str], dict]:
    """The conditions and references a published model's own protocol scores (``--split`` picks the set,
    ``--limit`` / ``--columns`` override its rows and columns), with what the report records of them."""
    from elf_fast.protocol import DataUnavailable, load_pairs

    proto = published.evaluation
    try:
        chosen = proto.eval_set(args.split)
        conditions, refs, used = load_pairs(chosen, limit=args.limit, columns=args.columns)
    except DataUnavailable as e:
        raise SystemExit(f"error: {published.name}: {e}") from e
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    name = args.split or proto.default_set
    print(f"{published.name}: the port's protocol, set {name!r} ({chosen.describe()}), {len(conditions)} rows, "
          f"{used[0]!r} -> {used[1]!r}, {proto.metric}", file=sys.stderr)
    return conditions, refs, {"data": chosen.dataset, "split": name, "data_config": chosen.config,
                              "data_split": chosen.split, "columns": list(used), "limit": args.limit or chosen.limit}


# --------------------------------------------------------------------------- run

def ppl_settings(args, proto) -> tuple[str, str]:
    """(convention, judge dtype) of Gen. PPL: the command line's, else a published model's protocol's (the
    port's computation with a bfloat16 judge), else elf_fast's in float32."""
    convention = args.ppl_convention or ("port" if proto is not None else "elf_fast")
    dtype = args.ppl_dtype or (proto.ppl_dtype if proto is not None else "float32")
    return convention, dtype


def _make_scorer(args, device, proto=None) -> Scorer:
    ppl_device = resolve_device_arg(args.ppl_device, "--ppl-device") if args.ppl_device else device
    convention, dtype = ppl_settings(args, proto)
    return Scorer(args.ppl_model, device=ppl_device, dtype=dtype, batch_size=args.ppl_batch_size,
                  max_length=args.ppl_max_length, convention=convention)


def _out_dir(path: str) -> Path:
    """``--out-dir``, created and checked writable before any work (OSError otherwise)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".elf_fast_write_check.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"--out-dir {path!r} cannot be written: {e.strerror or e}") from e
    return out


def cmd_run(args) -> int:
    from elf_fast.metrics import count_empty

    start = time.perf_counter()
    device = resolve_device_arg(args.device)
    if args.ppl_device:
        resolve_device_arg(args.ppl_device, "--ppl-device")
    out = _out_dir(args.out_dir)
    progress = not args.no_progress
    report: dict = {"mode": "texts", "metrics": {}}
    gen = conditions = proto = None
    sampling_s = 0.0

    if args.texts:
        for flag in ("data", "checkpoint"):
            if getattr(args, flag):
                raise SystemExit(f"error: --texts scores existing samples; --{flag} does not apply")
        texts, refs = read_texts(args.texts)
        records = [{"index": i, "text": t, **({"reference": refs[i]} if refs else {})} for i, t in enumerate(texts)]
        metric = args.metric or "both"
        report["texts"] = str(args.texts)
    else:
        # a published model's own protocol; its data is loaded before the model, so data that cannot be
        # had (offline, not cached) fails at once, not after a download of the weights
        published = published_of(args)
        proto = published.evaluation if published is not None else None
        data_report, conditions, refs = {}, None, None
        if proto is not None and proto.conditional and not args.data:
            conditions, refs, data_report = protocol_data(args, published)
        gen = load_generator(args)
        conditional, task = gen.conditional, gen.task
        if proto is not None and proto.conditional != conditional:
            # a folder named after a published model holding some other model: no protocol
            proto, conditions, refs, data_report = None, None, None, {}
        if conditional and conditions is None and not args.data:
            raise SystemExit(f"error: this checkpoint is conditional (task {task!r}, max_input_length {gen.max_input_length}): "
                             "pass --data with 'condition' and 'target' columns")
        if not conditional and (args.data or args.cfg is not None):
            raise SystemExit(f"error: {'--data' if args.data else '--cfg'} given, but this checkpoint is unconditional")
        if conditional and args.data:
            columns = [tuple(args.columns)] if args.columns else [("condition", "target")]
            split = args.split
            if proto is not None:  # the protocol's columns and the port's layouts too; its set's split
                s0 = proto.eval_set(None)
                columns = columns if args.columns else [(s0.source, s0.target), *DATA_COLUMNS]
            elif split is None:
                split = "test"
            if isinstance(args.data, tuple):  # two parallel text files
                conditions, refs = read_parallel_text(*args.data, args.limit)
                data_report = {"data": list(args.data), "split": None, "limit": args.limit}
            else:
                conditions, refs, split = read_conditional_data(args.data, split, args.limit, columns)
                data_report = {"data": str(args.data), "split": split, "limit": args.limit}
        cfg = sampler_from_args(gen, args, announce=False)
        length = args.length or (proto.length if proto is not None and not conditional else None) or gen.default_length
        n = len(conditions) if conditional else (args.num_samples or (proto.num_samples if proto is not None else None)
                                                 or DEFAULT_SAMPLES)
        metric = args.metric or (proto.metric if proto is not None and conditional else None) \
            or gen.header.data.metric or "both"
        report.update(mode="conditional" if conditional else "unconditional", checkpoint=_canonical(gen.checkpoint),
                      preset=gen.header.preset, task=task, sampler=cfg.to_dict(), length=length,
                      batch_size=args.batch_size or min(n, 32), seed=args.seed, device=str(gen.device),
                      dtype=args.dtype or ("bfloat16" if gen.device.type == "cuda" else "float32"))
        if proto is not None:
            report["protocol"] = published.repo_id
        if conditional:
            report.update(data_report)
        try:  # every argument checked before samples.jsonl is opened (and emptied)
            gen.check_generate(None if conditional else n, conditions=conditions, length=length,
                               batch_size=args.batch_size, seed=args.seed, sampler=cfg)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from e

    # Gen. PPL by default for unconditional samples; with references only when asked (--gen-ppl).
    # The judge loads before sampling, so a bad --ppl-model fails fast.
    do_ppl = args.gen_ppl if args.gen_ppl is not None else refs is None
    scorer = _make_scorer(args, device, proto) if do_ppl else None

    if gen is not None:
        t0 = time.perf_counter()
        with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
            def emit(batch):  # written as produced (rewritten with the scores at the end)
                for rec in batch:
                    if refs is not None:
                        rec["reference"] = refs[rec["index"]]
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()

            records = gen.generate(None if conditional else n, conditions=conditions, length=length,
                                   batch_size=args.batch_size, seed=args.seed, sampler=cfg, progress=progress,
                                   on_batch=emit)
        sampling_s = time.perf_counter() - t0
        texts = [r["text"] for r in records]

    t0 = time.perf_counter()
    m = report["metrics"]
    if refs is not None:
        bleu_settings = proto.bleu if gen is not None and proto is not None else None
        m.update(reference_metrics(texts, refs, metric, bleu_settings))
    if do_ppl:
        scored = scorer.perplexity(texts, progress=progress)
        per_sample = scored.pop("per_sample_nll")
        if len(per_sample) == len(records):
            for rec, nll in zip(records, per_sample):
                rec["nll"] = _finite(nll)
        m.update({k: _finite(v) for k, v in scored.items()})
    m["n_empty"] = count_empty(texts)
    m["n_samples"] = len(texts)
    scoring_s = time.perf_counter() - t0
    if do_ppl:
        report.update(ppl_convention=scorer.convention, ppl_dtype=ppl_settings(args, proto)[1])
    report.update(ppl_model=args.ppl_model if do_ppl else None, sampling_s=round(sampling_s, 3), scoring_s=round(scoring_s, 3),
                  elapsed_s=round(time.perf_counter() - start, 3),
                  finished=time.strftime("%Y-%m-%d %H:%M:%S"))

    write_jsonl(out / "samples.jsonl", records)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md = report_markdown(report)
    (out / "report.md").write_text(md, encoding="utf-8")
    print(md, end="")
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'samples.jsonl'}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- sweep

def sweep_settings(steps, samplers, w_scs, gammas) -> list[dict]:
    """The grid, in order; ODE ignores gamma, so it gets one setting (gamma None) per (steps, w_sc)."""
    seen, out = set(), []
    for n, s, w, g in itertools.product(steps, samplers, w_scs, gammas):
        setting = {"steps": int(n), "sampler": s, "gamma": float(g) if s == "sde" else None, "w_sc": float(w)}
        key = _setting_key(setting)
        if key not in seen:
            seen.add(key)
            out.append(setting)
    return out


def _setting_key(row: dict) -> tuple:
    g = row.get("gamma")
    return (int(row["steps"]), row["sampler"], None if g is None else float(g), float(row["w_sc"]))


def load_sweep(path: Path) -> list[dict]:
    """Rows of ``sweep.jsonl``; a line cut off by a kill is dropped (and the file rewritten without it)."""
    if not path.is_file():
        return []
    raw = path.read_text(encoding="utf-8")
    rows, bad = [], 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    if bad or (raw and not raw.endswith("\n")):
        print(f"NOTE: dropping {bad} unreadable line(s) of {path}", file=sys.stderr)
        write_jsonl(path, rows)
    return rows


def _canonical(name: str) -> str:
    """A local path as an absolute one (so ./ckpt and ckpt match when resuming); hub names unchanged."""
    return os.path.abspath(name) if os.path.exists(name) else name


def cmd_sweep(args) -> int:
    from elf_fast.metrics import count_empty

    progress = not args.no_progress
    if args.ppl_device:
        resolve_device_arg(args.ppl_device, "--ppl-device")
    out = _out_dir(args.out_dir)
    path = out / "sweep.jsonl"

    published = published_of(args)
    gen = load_generator(args)
    device = gen.device
    proto = published.evaluation if published is not None and published.evaluation is not None \
        and not published.evaluation.conditional and not gen.conditional else None
    if gen.conditional:
        raise SystemExit("error: sweep evaluates unconditional checkpoints; this one is conditional "
                         "(use `run --data ...` per setting)")
    length = args.length or gen.default_length
    settings = sweep_settings(args.steps, args.samplers, args.w_sc, args.gammas)
    try:  # every setting checked before the first one runs (and before --fresh discards anything)
        configs = {_setting_key(s): SamplerConfig(steps=s["steps"], sampler=s["sampler"],
                                                  gamma=s["gamma"] if s["sampler"] == "sde" else 0.0, w_sc=s["w_sc"],
                                                  grid=args.grid) for s in settings}
        gen.check_generate(args.num_samples, length=length, batch_size=args.batch_size, seed=args.seed,
                           sampler=next(iter(configs.values())))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    if args.fresh and path.exists():
        path.unlink()
    context = {"checkpoint": _canonical(gen.checkpoint),
               "num_samples": args.num_samples, "seed": args.seed, "length": length, "grid": args.grid,
               "ppl_model": _canonical(args.ppl_model), "ppl_convention": ppl_settings(args, proto)[0]}
    rows = load_sweep(path)
    for r in rows:
        r.setdefault("ppl_convention", "elf_fast")  # rows written before there was a choice
        diff = [f"{k}: {r.get(k)!r} there, {v!r} now" for k, v in context.items() if r.get(k) != v]
        if diff:
            raise SystemExit(f"error: {path} holds rows of a different sweep ({'; '.join(diff)}); "
                             "pass another --out-dir, or --fresh to start over")
    done = {_setting_key(r) for r in rows}
    todo = [s for s in settings if _setting_key(s) not in done]
    print(f"sweep: {len(settings)} settings, {len(settings) - len(todo)} already in {path}, {len(todo)} to run",
          file=sys.stderr)

    scorer = _make_scorer(args, device, proto) if todo else None
    (out / "samples").mkdir(exist_ok=True)
    for i, s in enumerate(todo, 1):
        sde = s["sampler"] == "sde"
        cfg = configs[_setting_key(s)]
        tag = f"{s['sampler']}_{s['steps']}steps_w{s['w_sc']:g}" + (f"_g{s['gamma']:g}" if sde else "")
        t0 = time.perf_counter()
        records = gen.generate(args.num_samples, length=length, batch_size=args.batch_size, seed=args.seed,
                               sampler=cfg, progress=progress, desc=f"[{i}/{len(todo)}] {tag}")
        seconds = time.perf_counter() - t0
        texts = [r["text"] for r in records]
        t0 = time.perf_counter()
        scored = scorer.perplexity(texts, progress=progress)
        for rec, nll in zip(records, scored.pop("per_sample_nll")):
            rec["nll"] = _finite(nll)
        row = {**s, **{k: _finite(v) for k, v in scored.items()}, "n_empty": count_empty(texts),
               "seconds": round(seconds, 3), "score_seconds": round(time.perf_counter() - t0, 3), **context,
               "device": str(device)}
        write_jsonl(out / "samples" / f"{tag}.jsonl", records)
        with open(path, "a", encoding="utf-8") as f:  # one row at a time: a killed sweep resumes here
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        rows.append(row)
        print(f"{tag}: Gen. PPL {fmt(row['gen_ppl'])}, entropy {fmt(row['entropy'])}, "
              f"{row['n_empty']} empty, {seconds:.1f} s", file=sys.stderr)

    # tables and plots show every row of sweep.jsonl: a grid extended by a later call shows in full
    md = sweep_markdown(rows, SWEEP_CONTEXT)
    (out / "sweep.md").write_text(md, encoding="utf-8")
    plot_sweep(rows, out)
    print(md, end="")
    print(f"wrote {path}, {out / 'sweep.md'}, {out / 'frontier.png'}, {out / 'ppl_vs_steps.png'}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- CLI

def _common() -> argparse.ArgumentParser:
    p = ArgumentParser(add_help=False)
    add_generator_args(p)
    p.add_argument("--out-dir", default="eval_out", help="where reports go (default eval_out/)")
    p.add_argument("--batch-size", type=validate.arg_setting("batch_size"), default=0,
                   help="sampling batch (default: min(num-samples, 32))")
    p.add_argument("--length", type=validate.arg_setting("length"), default=0,
                   help="tokens per sample (default: the checkpoint's seq_len, else 64; a conditional checkpoint's "
                        "layout fixes it: max_length - max_input_length)")
    p.add_argument("--seed", type=validate.arg_setting("seed"), default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="ELF transformer-block weights (default: bfloat16 on CUDA, float32 on CPU)")
    add_compile_arg(p)
    p.add_argument("--ppl-model", default="gpt2-large",
                   help="causal LM for Gen. PPL: hub name or local folder (default gpt2-large)")
    p.add_argument("--ppl-device", help="default: --device")
    p.add_argument("--ppl-dtype", choices=("float32", "bfloat16"), default=None,
                   help="the judge's weights (default float32; a published model's protocol: bfloat16, as the port)")
    p.add_argument("--ppl-convention", choices=PPL_CONVENTIONS, default=None,
                   help="elf_fast: a BOS before each sample, every token predicted; port: the official port's "
                        "computation, to compare with its numbers (default: port for a published model, else elf_fast)")
    p.add_argument("--ppl-batch-size", type=validate.arg_int(1, 65_536), default=8)
    p.add_argument("--ppl-max-length", type=validate.arg_int(2, 1 << 20), default=1024, help="evaluator context (default 1024)")
    p.add_argument("--no-progress", action="store_true")
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m elf_fast.evaluate", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Without a subcommand, `run` is assumed.")
    sub = ap.add_subparsers(dest="command")
    run = sub.add_parser("run", parents=[_common()], help="evaluate one setting (default)",
                         description="Sample and score one setting, or score --texts.")
    run.add_argument("--num-samples", type=validate.arg_setting("num_samples"), default=None,
                     help=f"unconditional samples (default: a published model's protocol, else {DEFAULT_SAMPLES})")
    add_sampler_args(run)
    run.add_argument("--data", nargs="+", metavar="PATH",
                     help="conditional checkpoints: jsonl / parquet file or folder, or a save_to_disk folder, "
                          "with condition and target columns (a published model: its protocol's data when "
                          "left out, and its columns or the port's input / target, input / output); or two "
                          "plain text files, conditions and references, one per line (newstest2014.de newstest2014.en)")
    run.add_argument("--split", default=None,
                     help="split of --data (default: test; for a published model its only split); a published "
                          "model's set without --data: validation (the port's, default) or test (the paper's)")
    run.add_argument("--columns", nargs=2, metavar=("SOURCE", "TARGET"),
                     help="condition and reference columns (a dotted name reads a field: translation.de translation.en)")
    run.add_argument("--limit", type=validate.arg_int(1), help="first N rows of the split (a published model's "
                                                                  "validation set: 1000, as the port)")
    run.add_argument("--texts", help="score this jsonl (field 'text', optional 'reference') instead of sampling")
    run.add_argument("--metric", choices=("bleu", "rouge", "both"),
                     help="reference metric (default: by the checkpoint's task; both for --texts)")
    run.add_argument("--gen-ppl", action=argparse.BooleanOptionalAction, default=None,
                     help="score Gen. PPL and entropy (default: on without references, off with them)")
    sw = sub.add_parser("sweep", parents=[_common()], help="a grid of unconditional settings",
                        description="One unconditional run per (steps, sampler, gamma, w_sc); resumable.")
    sw.add_argument("--num-samples", type=validate.arg_setting("num_samples"), default=100,
                    help="samples per setting (default 100)")
    sw.add_argument("--steps", type=validate.arg_setting("steps"), nargs="+", default=list(SWEEP_STEPS),
                    help=f"step counts (default {' '.join(map(str, SWEEP_STEPS))}: few-step students too)")
    sw.add_argument("--samplers", choices=("ode", "sde"), nargs="+", default=["ode", "sde"])
    sw.add_argument("--w-sc", type=validate.arg_setting("w_sc"), nargs="+", default=[1.0, 2.0, 3.0])
    sw.add_argument("--gammas", type=validate.arg_setting("gamma"), nargs="+", default=[1.5], help="SDE churn values")
    sw.add_argument("--fresh", action="store_true", help="discard an existing sweep.jsonl in --out-dir")
    sw.add_argument("--grid", choices=("logit_normal", "uniform"), default="logit_normal")
    ap.subcommands = {"run": run, "sweep": sw}
    return ap


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "sweep", "-h", "--help"):
        argv = ["run", *argv]
    ap = build_parser()
    args = ap.parse_args(argv)
    sub = ap.subcommands[args.command]  # errors show the subcommand's usage
    if args.checkpoint is not None and not args.checkpoint.strip():
        sub.error("--checkpoint is empty (leave it out for the built-in model)")
    data = getattr(args, "data", None)
    if data is not None:
        if len(data) > 2:
            sub.error(f"--data takes one path, or two parallel text files (conditions, references); got {len(data)}")
        args.data = data[0] if len(data) == 1 else tuple(data)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return cmd_sweep(args) if args.command == "sweep" else cmd_run(args)


if __name__ == "__main__":
    from elf_fast.cli import run

    sys.exit(run(main))

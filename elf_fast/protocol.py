"""How the official port evaluates each published model, as data, and the loading of its evaluation data.

The port's evaluator (``src/eval.py`` and ``src/generation.py`` of branch ``pytorch_elf``) scores
a model with what its training YAML says:

* unconditional models (no ``eval_data_path``): ``num_samples`` samples (1,000; the distilled
  student's config says 500) of ``max_length`` (1,024) tokens, Gen. PPL under GPT-2 Large
  (``eval_ppl_model``, context ``eval_ppl_max_length`` 1,024) and the mean unigram entropy of
  the GPT-2 tokens of each sample;
* conditional models: the first ``num_samples`` (1,000) rows of ``eval_data_path`` in order (the
  port's own copies of the validation sets on the hub, ``embedded-language-flows/
  wmt14_de-en_validation_t5`` and ``.../xsum_validation_t5``: a ``save_to_disk`` folder uploaded as a
  dataset repo, text columns ``input`` and ``target`` beside the pre-tokenised ids), one target
  each with the conditional sampler (64-step ODE, cfg 2, w_sc 1), scored with
  ``sacrebleu.corpus_bleu(hyps, [refs], lowercase=True, use_effective_order=True)`` and mean
  ROUGE-1/2/L F1 (``rouge_score``, Porter stemmer). Its README reports BLEU for WMT14 De-En and
  ROUGE for XSum.

:class:`EvalProtocol` records that per model (``elf_fast.hub.PUBLISHED[...].evaluation``);
its ``sets`` name the data: ``validation`` is the port's copy (the rows behind the port's
README numbers), ``test`` the public test split on the hub (``wmt/wmt14`` ``de-en``,
``EdinburghNLP/xsum``), where the paper's numbers were measured. :func:`load_pairs` loads a set
through ``datasets`` when the hub is reachable (or the set is in the Hugging Face cache), and
fails at once with one line naming the dataset and the ``--data`` alternative when it is not.

Only ``datasets`` / ``huggingface_hub`` are imported, and only when data is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: the port's sacrebleu settings (src/utils/metrics_utils.py: compute_bleu)
PORT_BLEU = {"lowercase": True, "effective_order": True}

#: column pairs (condition, target) tried, in order, on data given with --data for a published model:
#: elf_fast's own, the port's eval copies, the port's evaluation jsonl ({"input", "output"})
DATA_COLUMNS = (("condition", "target"), ("input", "target"), ("input", "output"))


@dataclass(frozen=True)
class EvalSet:
    """One evaluation data set: ``dataset`` a hub dataset id (or a local path: tests, mirrors),
    ``config`` / ``split`` / ``revision`` as ``datasets.load_dataset`` takes them (``split`` None:
    the dataset's only split), ``source`` / ``target`` the condition and reference columns (a
    dotted name reads a field of a dict column: ``translation.de``), ``limit`` the first rows
    scored (None: all). ``saved``: the repo holds a ``save_to_disk`` folder (the port's copies),
    read with ``snapshot_download`` + ``load_from_disk`` as the port's loader does."""

    dataset: str
    source: str
    target: str
    split: str | None = None
    config: str | None = None
    revision: str | None = None
    saved: bool = False
    limit: int | None = None
    note: str = ""

    def describe(self) -> str:
        parts = [self.dataset] + ([f"config {self.config}"] if self.config else []) + \
                ([f"split {self.split}"] if self.split else [])
        return ", ".join(parts)


@dataclass(frozen=True)
class EvalProtocol:
    """How one published model is scored. ``metric``: ``gen_ppl`` (with unigram entropy), ``bleu``
    or ``rouge`` (ROUGE-1/2/L). Unconditional: ``num_samples`` samples of ``length`` tokens,
    judged by ``ppl_model`` (weights in ``ppl_dtype``, the port's bfloat16) with context
    ``ppl_max_length``, the port's way (:meth:`elf_fast.metrics.PerplexityScorer.score_port`). Conditional: ``sets`` by name
    (``default_set`` unless ``--split`` names another), ``bleu`` the sacrebleu settings."""

    metric: str
    num_samples: int | None = None
    length: int | None = None
    ppl_model: str = "gpt2-large"
    ppl_max_length: int = 1024
    ppl_dtype: str = "bfloat16"
    sets: dict = field(default_factory=dict)
    default_set: str | None = None
    bleu: dict = field(default_factory=dict)
    note: str = ""

    def __post_init__(self):
        if self.metric not in ("gen_ppl", "bleu", "rouge"):
            raise ValueError(f"metric must be gen_ppl, bleu or rouge, got {self.metric!r}")
        if self.metric == "gen_ppl" and self.sets:
            raise ValueError("an unconditional protocol takes no data sets")
        if self.metric != "gen_ppl" and self.default_set not in self.sets:
            raise ValueError(f"default_set {self.default_set!r} is not one of the sets {sorted(self.sets)}")

    @property
    def conditional(self) -> bool:
        return self.metric != "gen_ppl"

    def eval_set(self, name: str | None) -> EvalSet:
        name = self.default_set if name is None else name
        if name not in self.sets:
            raise ValueError(f"this model's evaluation has the sets {sorted(self.sets)}, not {name!r} "
                             "(or pass local files with --data)")
        return self.sets[name]


def unconditional(num_samples: int = 1000, length: int = 1024) -> EvalProtocol:
    return EvalProtocol("gen_ppl", num_samples=num_samples, length=length)


def _port_copy(name: str, limit: int = 1000) -> EvalSet:
    return EvalSet(f"embedded-language-flows/{name}", source="input", target="target", saved=True, limit=limit,
                   note="the port's eval_data_path: its copy of the validation set, first 1,000 rows as its "
                        "num_samples says")


WMT14_DE_EN = EvalProtocol(
    "bleu", default_set="validation", bleu=dict(PORT_BLEU),
    sets={"validation": _port_copy("wmt14_de-en_validation_t5"),
          "test": EvalSet("wmt/wmt14", config="de-en", split="test", source="translation.de",
                          target="translation.en", note="newstest2014, 3,003 pairs: the paper's test set")})

XSUM = EvalProtocol(
    "rouge", default_set="validation", bleu=dict(PORT_BLEU),
    sets={"validation": _port_copy("xsum_validation_t5"),
          "test": EvalSet("EdinburghNLP/xsum", split="test", revision="refs/convert/parquet", source="document",
                          target="summary", note="XSum test split, 11,334 articles: the paper's test set")})


# --------------------------------------------------------------------------- loading

class DataUnavailable(FileNotFoundError):
    """Evaluation data that cannot be loaded here (offline, hub out of reach); the message is one line."""


def _texts(ds, column: str) -> list[str] | None:
    """The strings of ``column`` (a dotted name reads a field of a dict column), None when absent."""
    if column in ds.column_names:
        vals = ds[column]
    else:
        head, _, key = column.partition(".")
        if not key or head not in ds.column_names:
            return None
        vals = [v.get(key) if isinstance(v, dict) else None for v in ds[head]]
    return ["" if v is None else str(v) for v in vals]


def pairs_from(ds, columns, where: str) -> tuple[list[str], list[str], tuple[str, str]]:
    """(conditions, references, the columns used) of a ``datasets.Dataset``: the first of
    ``columns`` (pairs of names) that it has; ValueError naming what it has otherwise."""
    for src, tgt in columns:
        conds, refs = _texts(ds, src), _texts(ds, tgt)
        if conds is not None and refs is not None:
            return conds, refs, (src, tgt)
    wanted = " or ".join(f"{s!r} -> {t!r}" for s, t in columns)
    raise ValueError(f"{where} has the columns {ds.column_names}, not {wanted} (name yours with --columns SOURCE TARGET)")


def _offline() -> bool:
    from elf_fast import hub

    return hub._offline() or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _todo(s: EvalSet) -> str:
    return (f"load it where the hub is reachable (it is then read from the Hugging Face cache, also with "
            f"HF_HUB_OFFLINE=1), or pass local files: --data PATH (a save_to_disk folder, or jsonl / parquet files "
            f"with the columns {s.source!r} -> {s.target!r})")


def _load_saved_repo(s: EvalSet, cache_dir):
    """The port's copies: a save_to_disk folder in a dataset repo (its loader's fallback path)."""
    import huggingface_hub as hf

    from elf_fast import hub
    from elf_fast.data import load_text_dataset

    try:
        folder = hf.snapshot_download(s.dataset, repo_type="dataset", revision=s.revision, cache_dir=cache_dir,
                                      local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: go on
        folder = None
    if folder is None:
        why = "HF_HUB_OFFLINE is set" if _offline() else hub._unreachable()
        if why is not None:
            raise DataUnavailable(f"evaluation data {s.describe()} is not in the Hugging Face cache and {why}: {_todo(s)}")
        try:
            folder = hf.snapshot_download(s.dataset, repo_type="dataset", revision=s.revision, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - RepositoryNotFoundError, HTTP errors, ...
            first = str(e).splitlines()[0] if str(e) else ""
            raise DataUnavailable(f"evaluation data {s.describe()} could not be downloaded ({type(e).__name__}: "
                                  f"{first}): pass local files with --data PATH") from e
    return load_text_dataset(folder, s.split)


def _load_hub(s: EvalSet, cache_dir):
    import datasets

    from elf_fast import hub

    offline = _offline()
    why = "HF_HUB_OFFLINE is set" if offline else hub._unreachable()
    if why is not None and not datasets.config.HF_HUB_OFFLINE:
        # datasets itself is not in offline mode (HF_HUB_OFFLINE set after it was imported, or the hub
        # merely out of reach): it would retry for a long while, so say so at once
        raise DataUnavailable(f"evaluation data {s.describe()} cannot be loaded: {why}: {_todo(s)}")
    try:
        return datasets.load_dataset(s.dataset, s.config, split=s.split, revision=s.revision, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - ConnectionError offline, HTTP errors, ...
        first = str(e).splitlines()[0] if str(e) else ""
        if why is not None:
            raise DataUnavailable(f"evaluation data {s.describe()} is not in the Hugging Face cache and {why}: "
                                  f"{_todo(s)}") from e
        raise DataUnavailable(f"evaluation data {s.describe()} could not be loaded ({type(e).__name__}: {first}): "
                              f"pass local files with --data PATH") from e


def load_set(s: EvalSet, *, cache_dir: str | os.PathLike | None = None):
    """The ``datasets.Dataset`` of ``s``: a local path as :func:`elf_fast.data.load_text_dataset`
    reads it; a hub dataset from the Hugging Face cache or, when the hub is reachable, downloaded.
    :class:`DataUnavailable` (one line, within seconds) when it is neither cached nor reachable."""
    from elf_fast.data import load_text_dataset

    local = Path(os.path.expanduser(s.dataset))
    if local.exists():
        return load_text_dataset(local, s.split)
    ds = _load_saved_repo(s, cache_dir) if s.saved else _load_hub(s, cache_dir)
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise ValueError(f"evaluation data {s.describe()} has the splits {sorted(ds)}; the protocol names none")
        ds = next(iter(ds.values()))
    return ds


def load_pairs(s: EvalSet, *, limit: int | None = None, columns=None, cache_dir=None):
    """(conditions, references, the columns used) of set ``s``: its first ``limit`` rows
    (default ``s.limit``; None: all); ``columns`` a (source, target) pair instead of the set's."""
    ds = load_set(s, cache_dir=cache_dir)
    n = limit if limit is not None else s.limit
    if n is not None:
        ds = ds.select(range(min(n, len(ds))))
    conds, refs, used = pairs_from(ds, [tuple(columns)] if columns else [(s.source, s.target)],
                                   f"evaluation data {s.describe()}")
    if not conds:
        raise ValueError(f"evaluation data {s.describe()} is empty")
    return conds, refs, used

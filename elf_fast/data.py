"""Data for ELF (docs/method.md §4): corpora, packed unconditional blocks, conditional pairs.

ELF trains on token ids of the frozen encoder's tokenizer (:mod:`elf_fast.encoder`):

* unconditional LM (OpenWebText in the paper): documents tokenised *without* special tokens,
  concatenated with ``eos_id`` after every document and chopped into blocks of exactly
  ``seq_len`` ids (:func:`pack_unconditional`, column ``input_ids``);
* conditional tasks (WMT14 De-En, XSum in the paper): the reference port's packed layout
  (docs/method.md §4.1): condition and target tokenised without special tokens, the condition
  cut to ``max_input_length`` ids, the two concatenated into one sequence of ``max_length``
  ids padded at the end (:func:`tokenize_pairs`, columns ``input_ids``, ``cond_len``,
  ``valid_len``; :func:`pack_pairs` for id lists); masks from :func:`pair_masks`, the loss
  positions from :func:`pair_loss_mask`, the encoder's block mask from
  ``FrozenEncoder.encode_packed``.

Offline corpora for all three task types come from Debian's package descriptions
(:mod:`elf_fast.debian`: ``en``, ``de-en``, ``summary``). Anything else loads with
:func:`load_text_dataset` (a ``save_to_disk`` folder, json/jsonl/txt/parquet files or folders
of them, or a hub name when online).

Command line (the Debian corpora; see :mod:`elf_fast.debian`)::

    python -m elf_fast.data prepare-debian --out data/debian [--lists-dir /var/lib/apt/lists]
    python -m elf_fast.data make-fixtures --out tests/fixtures/debian

Choices docs/method.md leaves open, written down here:
* packed ``input_ids`` are stored as int32 fixed-length lists, masks as int8 0/1; training
  (``load_tensors`` / ``make_batch`` in ``training/train.py``) turns the ids into int64
  tensors and the masks into bool;
* counts of skipped / truncated items go to an optional ``stats`` dict and to a logged warning.
"""

from __future__ import annotations

import codecs
import logging
import operator
import os
import re
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")

#: file extension -> datasets builder name
_BUILDERS = {".json": "json", ".jsonl": "json", ".txt": "text", ".parquet": "parquet"}
#: file stem -> split name, for folders of files
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                  "dev": "validation", "test": "test"}


def _import_datasets():
    from elf_fast.extras import require

    return require("datasets", "loading and preparing data")


# ----------------------------------------------------------------- loading
def _check_text_file(path: str) -> None:
    """ValueError naming ``path`` if it is empty (no non-whitespace) or not valid UTF-8."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"data file {path!r} is empty")
    dec = codecs.getincrementaldecoder("utf-8")()
    nonblank = False
    offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            try:
                s = dec.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"data file {path!r} is not valid UTF-8 (byte offset ~{offset + e.start}): {e.reason}"
                ) from e
            nonblank = nonblank or bool(s.strip())
            offset += len(chunk)
            if not chunk:
                break
    if not nonblank:
        raise ValueError(f"data file {path!r} is empty (only whitespace)")


def _split_of_file(path: str) -> str | None:
    stem = os.path.basename(path).split(".")[0].lower()
    if stem in _SPLIT_ALIASES:
        return _SPLIT_ALIASES[stem]
    for part in re.split(r"[-_]", stem):
        if part in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[part]
    return None


def _is_saved_dataset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")))


def _looks_like_hub_name(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", s)) and os.path.splitext(s)[1].lower() not in _BUILDERS


def _select(result, split: str | None, source: str):
    datasets = _import_datasets()
    if split is None or isinstance(result, datasets.Dataset):
        return result
    if split not in result:
        raise ValueError(f"split {split!r} not in {source!r}; available splits: {sorted(result)}")
    return result[split]


def load_text_dataset(source: str | os.PathLike, split: str | None = None, *, cache_dir: str | None = None,
                      text_sample_by: str = "line", check_utf8: bool = True):
    """A ``datasets.Dataset`` (``split`` given) or ``DatasetDict`` from ``source``:

    * a ``save_to_disk`` folder (``load_from_disk``);
    * a ``.json`` / ``.jsonl`` / ``.txt`` / ``.parquet`` file (split named by its stem when that
      is train / validation / valid / val / dev / test, else ``train``); ``.txt`` gives one row
      per line (``text_sample_by="line"``) or per ``"paragraph"`` / ``"document"``;
    * a folder of such files (searched recursively; one file type; splits from file names,
      files whose names name no split go to ``train``);
    * a Hugging Face hub name ``name`` or ``owner/name`` (only when online or cached; offline,
      the hub client retries for ~30 s unless ``HF_DATASETS_OFFLINE=1``). A relative
      ``folder/name`` whose ``folder`` exists locally is taken as a (missing) local path.

    ``check_utf8`` decodes every json/jsonl/txt file once up front (one pass over the data)
    so a bad file fails with its name; turn it off for huge corpora that are known to be clean.

    Errors: a missing local path -> FileNotFoundError; an empty or non-UTF-8 text/json file,
    a folder without data files, mixed file types, or an unknown ``split`` -> ValueError, each
    naming the path.
    """
    datasets = _import_datasets()
    src = os.path.expanduser(os.fspath(source))
    if os.path.isdir(src):
        if _is_saved_dataset(src):
            return _select(datasets.load_from_disk(src), split, src)
        files = []
        for root, dirs, names in os.walk(src):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in sorted(names)
                      if not n.startswith(".") and os.path.splitext(n)[1].lower() in _BUILDERS]
        if not files:
            raise ValueError(f"folder {src!r} holds no saved dataset and no {'/'.join(sorted(_BUILDERS))} files")
        builders = {_BUILDERS[os.path.splitext(p)[1].lower()] for p in files}
        if len(builders) > 1:
            raise ValueError(f"folder {src!r} mixes file types ({sorted(builders)}); keep one type per folder")
    elif os.path.isfile(src):
        ext = os.path.splitext(src)[1].lower()
        if ext not in _BUILDERS:
            raise ValueError(f"data file {src!r} has an unsupported extension {ext!r}; use one of {sorted(_BUILDERS)}")
        files = [src]
    elif _looks_like_hub_name(src) and not ("/" in src and os.path.isdir(src.split("/")[0])):
        return _load_hub(src, split, cache_dir)
    else:
        raise FileNotFoundError(f"data source {src!r} does not exist")

    builder = _BUILDERS[os.path.splitext(files[0])[1].lower()]
    data_files: dict[str, list[str]] = {}
    for p in files:
        if builder != "parquet" and check_utf8:
            _check_text_file(p)
        elif os.path.getsize(p) == 0:
            raise ValueError(f"data file {p!r} is empty")
        data_files.setdefault(_split_of_file(p) or "train", []).append(p)
    order = {s: i for i, s in enumerate(SPLITS)}
    data_files = dict(sorted(data_files.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    kw = {"sample_by": text_sample_by} if builder == "text" else {}
    try:
        dd = datasets.load_dataset(builder, data_files=data_files, cache_dir=cache_dir, **kw)
    except Exception as e:  # datasets wraps parse errors in its own types
        raise ValueError(f"could not load {src!r} with the datasets {builder!r} builder: {e}") from e
    return _select(dd, split, src)


def _load_hub(name: str, split: str | None, cache_dir: str | None):
    datasets = _import_datasets()
    offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False)) or any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    try:
        return datasets.load_dataset(name, split=split, cache_dir=cache_dir)
    except Exception as e:
        raise FileNotFoundError(
            f"data source {name!r} is not a local path, and loading it as a Hugging Face hub dataset failed"
            f"{' (offline mode is on)' if offline else ''}: {type(e).__name__}: {e}\n"
            "hub names only load when online (or cached); pass a local file or folder instead"
        ) from e


# ----------------------------------------------------------------- tokenisation
def _resolve_tokenizer(tokenizer, eos_id=None, pad_id=None):
    """(hf_tokenizer, eos_id, pad_id) from a FrozenEncoder or a Hugging Face tokenizer; ids not given
    are the encoder's (:func:`elf_fast.encoder.special_token_ids`)."""
    if hasattr(tokenizer, "tokenizer") and hasattr(tokenizer, "eos_id"):   # FrozenEncoder
        enc = tokenizer
        return enc.tokenizer, (enc.eos_id if eos_id is None else eos_id), (enc.pad_id if pad_id is None else pad_id)
    if not callable(tokenizer):
        raise ValueError(f"tokenizer must be a FrozenEncoder or a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    if eos_id is None or pad_id is None:
        from elf_fast.encoder import special_token_ids

        eos, pad, _ = special_token_ids(tokenizer)
        eos_id, pad_id = eos if eos_id is None else eos_id, pad if pad_id is None else pad_id
    return tokenizer, eos_id, pad_id


def _check_columns(dataset, needed: Sequence[str], arg_names: Sequence[str]) -> None:
    cols = list(dataset.column_names)
    for c, a in zip(needed, arg_names):
        if c not in cols:
            raise ValueError(f"{a} {c!r} is not a column of the dataset; available columns: {cols}")


def _check_pos_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def _merge(stats: dict | None, st: dict) -> None:
    if stats is not None:
        stats.update(st)


def first_line_of(text):
    """A document's first line (Debian's synopsis, for a description); a non-string as it is."""
    return text.split("\n", 1)[0] if isinstance(text, str) else text


def _unconditional_inputs(datasets, dataset, tokenizer, seq_len, eos_id, text_column):
    """(hf_tokenizer, eos_id) for packing or padding one split's ``text_column``; ValueError on bad input."""
    tok, eos_id, _ = _resolve_tokenizer(tokenizer, eos_id)
    _check_pos_int("seq_len", seq_len)
    try:
        if eos_id is None or isinstance(eos_id, bool) or operator.index(eos_id) < 0:
            raise TypeError
        eos_id = operator.index(eos_id)
    except TypeError:
        raise ValueError(f"eos_id must be a non-negative int (None: the tokenizer has no eos/sep token), got {eos_id!r}") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"dataset must be a single split (datasets.Dataset), got a DatasetDict with {sorted(dataset)}")
    _check_columns(dataset, [text_column], ["text_column"])
    return tok, eos_id


def pack_unconditional(
    dataset,
    tokenizer,
    seq_len: int,
    eos_id: int | None = None,
    text_column: str = "text",
    num_proc: int = 1,
    *,
    first_line: bool = False,
    batch_size: int = 1000,
    stats: dict | None = None,
):
    """Documents -> ``datasets.Dataset`` with one column ``input_ids`` (int32, each exactly ``seq_len``).

    Each non-empty ``text_column`` string is tokenised without special tokens and followed by
    ``eos_id`` (also after the last document); the concatenation of all documents, in dataset
    order, is cut into consecutive blocks of ``seq_len`` and the final partial block is dropped.
    ``tokenizer``: a FrozenEncoder (``eos_id`` defaults to its ``eos_id``) or an HF tokenizer.
    Empty / whitespace-only strings are skipped and counted. ``first_line``: each document's first
    line only (:func:`first_line_of`; one whose first line is empty counts as empty). ``stats`` (if given) receives
    ``documents``, ``empty_skipped``, ``tokens`` (eos included), ``blocks``, ``dropped_tokens``.
    The packed ids are assembled in memory (4 bytes per token).
    """
    datasets = _import_datasets()
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    tok, eos_id = _unconditional_inputs(datasets, dataset, tokenizer, seq_len, eos_id, text_column)

    def _tok(batch):
        texts = map(first_line_of, batch[text_column]) if first_line else batch[text_column]
        kept = [t for t in texts if isinstance(t, str) and t.strip()]
        ids = tok(kept, add_special_tokens=False, verbose=False)["input_ids"] if kept else []
        return {"ids": [list(x) + [eos_id] for x in ids]}

    # one row per non-empty document, so the number of skipped empties is the row difference
    n_rows = len(dataset)
    tokd = dataset.map(_tok, batched=True, batch_size=batch_size, num_proc=num_proc if num_proc > 1 else None,
                       remove_columns=dataset.column_names, desc="tokenising",
                       features=datasets.Features({"ids": datasets.List(datasets.Value("int32"))}))
    n_docs = len(tokd)
    ids_col = tokd.data.column("ids")
    lengths = np.asarray(pc.list_value_length(ids_col).to_numpy(zero_copy_only=False), dtype=np.int64)
    total = int(lengths.sum())
    n_blocks = total // seq_len
    # copy the flat token stream chunk by chunk; whatever lies past n_blocks * seq_len is dropped
    flat = np.empty(n_blocks * seq_len, dtype=np.int32)
    pos = 0
    for chunk in ids_col.chunks:
        vals = np.asarray(chunk.flatten().to_numpy(zero_copy_only=False), dtype=np.int32)
        take = min(len(vals), len(flat) - pos)
        flat[pos:pos + take] = vals[:take]
        pos += take
        if pos >= len(flat):
            break
    arr = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.int32()), seq_len)
    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32"), length=seq_len)})
    out = datasets.Dataset(pa.table({"input_ids": arr}), info=datasets.DatasetInfo(features=features))
    st = {"documents": n_docs, "empty_skipped": n_rows - n_docs, "tokens": total, "blocks": n_blocks,
          "dropped_tokens": total - n_blocks * seq_len}
    if st["empty_skipped"]:
        logger.warning("pack_unconditional: skipped %d empty strings in column %r", st["empty_skipped"], text_column)
    if n_blocks == 0:
        logger.warning("pack_unconditional: %d tokens are fewer than seq_len %d; no block", total, seq_len)
    _merge(stats, st)
    return out


def pad_documents(
    dataset,
    tokenizer,
    seq_len: int,
    eos_id: int | None = None,
    text_column: str = "text",
    *,
    first_line: bool = False,
    batch_size: int = 1000,
    stats: dict | None = None,
):
    """Documents -> ``datasets.Dataset`` with one column ``input_ids``: one document per row, its
    tokens, an EOS, then EOS up to ``seq_len`` (``data.pack: false``; the padding carries loss, as
    the paper's conditional layout with EOS padding does, so the model learns where a text ends).

    The alternative to :func:`pack_unconditional` for corpora of short texts, where a packed block
    would start and stop mid-document. A document of more than ``seq_len - 1`` tokens is dropped,
    not cut (a cut text would teach endings that are not there); empty ones are skipped.
    ``first_line``: keep only each document's first line (:func:`first_line_of`: Debian's synopsis).
    ``stats`` receives ``documents``, ``empty_skipped``, ``too_long_dropped``, ``tokens`` (text
    tokens, EOS excluded), ``blocks``.
    """
    datasets = _import_datasets()
    import numpy as np

    tok, eos_id = _unconditional_inputs(datasets, dataset, tokenizer, seq_len, eos_id, text_column)
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 for one token and its EOS, got {seq_len}")

    texts = list(map(first_line_of, dataset[text_column])) if first_line else dataset[text_column]
    kept = [t for t in texts if isinstance(t, str) and t.strip()]
    rows, tokens = [], 0
    for b0 in range(0, len(kept), batch_size):
        for ids in tok(kept[b0:b0 + batch_size], add_special_tokens=False, verbose=False)["input_ids"]:
            if len(ids) <= seq_len - 1:
                rows.append(list(ids) + [eos_id] * (seq_len - len(ids)))
                tokens += len(ids)
    arr = np.asarray(rows, dtype=np.int32).reshape(len(rows), seq_len)
    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32"), length=seq_len)})
    out = datasets.Dataset.from_dict({"input_ids": arr}, features=features)
    st = {"documents": len(kept), "empty_skipped": len(texts) - len(kept),
          "too_long_dropped": len(kept) - len(rows), "tokens": tokens, "blocks": len(rows)}
    if st["too_long_dropped"]:
        logger.warning("pad_documents: dropped %d of %d documents longer than seq_len - 1 = %d tokens",
                       st["too_long_dropped"], len(kept), seq_len - 1)
    _merge(stats, st)
    return out


def _check_pair_lengths(max_input_length, max_length) -> None:
    """ValueError unless 0 < max_input_length < max_length (both ints): the packed layout's lengths."""
    _check_pos_int("max_input_length", max_input_length)
    _check_pos_int("max_length", max_length)
    if max_input_length >= max_length:
        raise ValueError(f"max_input_length {max_input_length} leaves no target position in max_length {max_length}")


def pack_pairs(cond_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], max_length: int,
               max_input_length: int, pad_id: int):
    """Ragged condition / target id lists -> the packed layout (docs/method.md §4.1), as tensors.

    Each condition keeps its first ``max_input_length`` ids; condition and target are
    concatenated, cut to ``max_length`` and padded with ``pad_id`` at the end. Returns
    ``input_ids`` (B, max_length) int64, ``cond_len`` (B,) int64 (condition ids kept) and
    ``valid_len`` (B,) int64 (condition + target ids kept).
    """
    import torch

    _check_pair_lengths(max_input_length, max_length)
    if len(cond_ids) != len(tgt_ids):
        raise ValueError(f"{len(cond_ids)} conditions but {len(tgt_ids)} targets")
    ids = torch.full((len(cond_ids), max_length), int(pad_id), dtype=torch.long)
    cond_len = torch.zeros(len(cond_ids), dtype=torch.long)
    valid_len = torch.zeros(len(cond_ids), dtype=torch.long)
    for b, (c, t) in enumerate(zip(cond_ids, tgt_ids)):
        seq = (list(c)[:max_input_length] + list(t))[:max_length]
        ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        cond_len[b] = min(len(c), max_input_length)
        valid_len[b] = len(seq)
    return ids, cond_len, valid_len


def pair_masks(cond_len, valid_len, length: int):
    """``(cond_mask, valid)``, each (B, length) bool: position p is a condition position when
    ``p < cond_len``, a valid (non-padding) one when ``p < valid_len``."""
    import torch

    pos = torch.arange(length, device=cond_len.device)
    return pos < cond_len[:, None], pos < valid_len[:, None]


def pad_packed(input_ids, valid_len, pad_id: int):
    """``input_ids`` with every position from ``valid_len`` on set to ``pad_id`` (the id the
    ``pad_token`` setting picks: the tokenizer's padding id or its EOS id)."""
    import torch

    pos = torch.arange(input_ids.shape[1], device=input_ids.device)
    return input_ids.masked_fill(pos >= valid_len[:, None], int(pad_id))


#: The ``pad_token`` settings: which id pads a packed pair, and whether padding carries loss.
PAD_TOKENS = ("pad", "eos")


def pair_loss_mask(valid, cond_mask, pad_token: str):
    """The positions that carry loss (B, L) bool: the valid positions (``pad_token`` pad) or
    every position (``eos``: the padding EOS ids are learned as targets), never a condition
    position."""
    import torch

    if pad_token not in PAD_TOKENS:
        raise ValueError(f"pad_token must be one of {PAD_TOKENS}, got {pad_token!r}")
    return (valid if pad_token == "pad" else torch.ones_like(valid)) & ~cond_mask


def tokenize_pairs(
    dataset,
    tokenizer,
    max_input_length: int,
    max_length: int,
    condition_column: str = "condition",
    target_column: str = "target",
    *,
    pad_id: int | None = None,
    num_proc: int = 1,
    batch_size: int = 1000,
    keep_columns: Sequence[str] = (),
    stats: dict | None = None,
):
    """Condition / target pairs -> ``datasets.Dataset`` in the packed layout (docs/method.md
    §4.1): ``input_ids`` (``max_length`` ids: condition, then target, then ``pad_id``),
    ``cond_len`` and ``valid_len`` (see :func:`pack_pairs`).

    Both sides are tokenised *without* special tokens, as the reference port's loader does;
    the condition keeps its first ``max_input_length`` ids and the target what fits after it.
    The stored padding id does not matter: training re-pads with the id its ``pad_token``
    setting picks (:func:`pad_packed`). A column name ``"col.key"`` reads field ``key`` of a dict
    column ``col`` (the hub's WMT14: ``translation.de`` / ``translation.en``). Truncations are counted (``stats``: ``rows``,
    ``cond_truncated``, ``tgt_truncated``) and logged as a warning. Other columns are dropped
    except ``keep_columns``.
    """
    datasets = _import_datasets()
    tok, _, pad_id = _resolve_tokenizer(tokenizer, pad_id=pad_id)
    _check_pair_lengths(max_input_length, max_length)
    if pad_id is None:
        raise ValueError("pad_id is None: the tokenizer has no padding token; pass pad_id=")
    if isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"dataset must be a single split (datasets.Dataset), got a DatasetDict with {sorted(dataset)}")
    # "translation.de": field "de" of a dict column "translation" (the hub's wmt14 layout)
    cond_col, cond_key = (condition_column.split(".", 1) + [None])[:2]
    tgt_col, tgt_key = (target_column.split(".", 1) + [None])[:2]
    if condition_column in dataset.column_names:
        cond_col, cond_key = condition_column, None
    if target_column in dataset.column_names:
        tgt_col, tgt_key = target_column, None
    _check_columns(dataset, [cond_col, tgt_col] + list(keep_columns),
                   ["condition_column", "target_column"] + ["keep_columns entry"] * len(keep_columns))

    def _texts(batch, col, key):
        vals = batch[col]
        if key is not None:
            vals = [v.get(key) if isinstance(v, dict) else None for v in vals]
        return [v if isinstance(v, str) else "" for v in vals]

    def _map(batch):
        plain = lambda texts: tok(texts, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
        conds, tgts = plain(_texts(batch, cond_col, cond_key)), plain(_texts(batch, tgt_col, tgt_key))
        ids, cl, vl = pack_pairs(conds, tgts, max_length, max_input_length, pad_id)
        ct = sum(len(c) > max_input_length for c in conds)
        tt = sum(int(min(len(c), max_input_length)) + len(t) > max_length for c, t in zip(conds, tgts))
        n = len(conds)
        return {"input_ids": ids.tolist(), "cond_len": cl.tolist(), "valid_len": vl.tolist(),
                "_cond_trunc": [ct] + [0] * (n - 1), "_tgt_trunc": [tt] + [0] * (n - 1)}

    features = datasets.Features({
        **{c: dataset.features[c] for c in keep_columns},
        "input_ids": datasets.List(datasets.Value("int32"), length=max_length),
        "cond_len": datasets.Value("int32"), "valid_len": datasets.Value("int32"),
        "_cond_trunc": datasets.Value("int64"), "_tgt_trunc": datasets.Value("int64"),
    })
    remove = [c for c in dataset.column_names if c not in keep_columns]
    out = dataset.map(_map, batched=True, batch_size=batch_size, num_proc=num_proc if num_proc > 1 else None,
                      remove_columns=remove, features=features, desc="tokenising pairs")
    st = {"rows": len(out), "cond_truncated": int(sum(out["_cond_trunc"])), "tgt_truncated": int(sum(out["_tgt_trunc"]))}
    out = out.remove_columns(["_cond_trunc", "_tgt_trunc"])
    if st["cond_truncated"] or st["tgt_truncated"]:
        logger.warning("tokenize_pairs: truncated %d of %d conditions to %d tokens and %d pairs to %d tokens",
                       st["cond_truncated"], st["rows"], max_input_length, st["tgt_truncated"], max_length)
    _merge(stats, st)
    return out


# ----------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``prepare-debian`` / ``make-fixtures``: the commands of :func:`elf_fast.debian.main`."""
    from elf_fast.debian import main as debian_main

    return debian_main(argv, prog="python -m elf_fast.data")


if __name__ == "__main__":
    from elf_fast.cli import run

    sys.exit(run(main))

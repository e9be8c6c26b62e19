"""Offline corpora from Debian's package descriptions (docs/method.md §4): en, de-en and summary.

``apt-get update -o Acquire::Languages=de,en`` stores Debian's Translation files (one deb822
paragraph per package description, ``*_i18n_Translation-XX[.lz4|.gz|.xz|.bz2]``) under
``/var/lib/apt/lists``. :func:`prepare_debian` turns them into three ``save_to_disk``
datasets, one per ELF task type, which :func:`elf_fast.data.load_text_dataset` reads back:

* ``en``: English descriptions (unconditional text; column ``text``);
* ``de-en``: German -> English description, matched by ``Description-md5`` (``condition``,
  ``target``);
* ``summary``: long English description -> one-line synopsis (``condition``, ``target``).

:func:`make_fixtures` writes the small jsonl samples under ``tests/fixtures/debian``.

Command line (``python -m elf_fast.data`` runs the same commands)::

    python -m elf_fast.debian prepare-debian --out data/debian [--lists-dir /var/lib/apt/lists]
    python -m elf_fast.debian make-fixtures --out tests/fixtures/debian

Choices docs/method.md leaves open, written down here:
* Debian long descriptions: lines starting with one space are wrapped text and are joined with
  single spaces; lines starting with two or more spaces are verbatim (lists, code) and keep
  their own line (one leading space stripped); a `` .`` line is a paragraph break -> ``"\\n"``.
  A document is ``synopsis + "\\n" + long`` (just the synopsis when there is no long part);
* texts are deduplicated by ``Description-md5``; a description shared by several packages
  belongs to the alphabetically first of them (its *canonical* package), in every dataset;
* splits are a pure function of the canonical package name (:func:`split_for_package`:
  sha1 -> bucket 0..99; < 96 train, 96-97 validation, 98-99 test), so a package never crosses
  splits, across datasets and runs. Near-duplicate descriptions of *different* packages
  (``foo`` / ``foo-data``) can still land in different splits;
* rows are sorted by (package, md5); no shuffling here (shuffle when training);
* counts of skipped paragraphs and dropped rows go to the stats (``stats.json``) and skipped
  paragraphs to a logged warning.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

from elf_fast.data import SPLITS, _import_datasets

logger = logging.getLogger(__name__)

DEFAULT_LISTS_DIR = "/var/lib/apt/lists"
APT_HINT = "run `apt-get update -o Acquire::Languages=de,en` (as root) to fetch Debian's Translation files"
_TRANSLATION_RE = re.compile(r"_i18n_Translation-([A-Za-z_]+)(\.(lz4|gz|xz|bz2))?$")


def _read_bytes(path: str) -> bytes:
    """The decompressed bytes of a (possibly .lz4/.gz/.xz/.bz2 compressed) file."""
    if path.endswith(".lz4"):
        with open(path, "rb") as f:
            raw = f.read()
        try:
            import lz4.frame
        except ImportError:
            if shutil.which("lz4") is None:
                from elf_fast.extras import require

                require("lz4.frame", f"reading the lz4-compressed {path!r} (or the lz4 command)")
            return subprocess.run(["lz4", "-d", "-c"], input=raw, stdout=subprocess.PIPE, check=True).stdout
        try:
            return lz4.frame.decompress(raw)
        except RuntimeError as e:
            raise ValueError(f"could not lz4-decompress {path!r}: {e}") from e
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(os.path.splitext(path)[1], open)
    with opener(path, "rb") as f:
        return f.read()


def _join_long(lines: list[str]) -> str:
    """Debian long-description continuation lines (leading space kept) -> text (see module doc)."""
    paras: list[list[str]] = [[]]
    for line in lines:
        body = line.rstrip()
        if body == " ." or body == ".":
            paras.append([])
            continue
        text = body[1:] if body.startswith(" ") else body
        if not text.strip():
            continue
        cur = paras[-1]
        if text.startswith(" ") or not cur or cur[-1].startswith(" "):
            cur.append(text)                    # verbatim line, or first line / after a verbatim one
        else:
            cur[-1] = cur[-1] + " " + text      # wrapped paragraph text
    return "\n".join("\n".join(p) for p in paras if p).strip("\n")


def parse_translation_text(text: str, stats: dict | None = None, *, source: str = "<text>") -> Iterator[dict]:
    """deb822 Translation text -> dicts ``package, md5, lang, synopsis, long`` (see
    :func:`parse_translation_file`)."""
    st = {"paragraphs": 0, "entries": 0, "skipped": 0}
    for para in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        if not para.strip():
            continue
        st["paragraphs"] += 1
        fields: dict[str, str] = {}
        cont: dict[str, list[str]] = {}
        last = None
        for line in para.split("\n"):
            if not line:
                continue
            if line[0] in " \t":
                if last is not None:
                    cont[last].append(line)
                continue
            key, sep, value = line.partition(":")
            if not sep:
                last = None
                continue
            last = key.strip().lower()
            fields[last] = value.strip()
            cont[last] = []
        desc_key = next((k for k in fields if k.startswith("description-") and k != "description-md5"), None)
        package = fields.get("package", "")
        if desc_key is None or not package or not fields[desc_key]:
            st["skipped"] += 1
            continue
        st["entries"] += 1
        md5 = fields.get("description-md5") or hashlib.md5(
            (fields[desc_key] + "\n" + "\n".join(cont[desc_key])).encode()).hexdigest()
        yield {"package": package, "md5": md5.lower(), "lang": desc_key[len("description-"):],
               "synopsis": fields[desc_key], "long": _join_long(cont[desc_key])}
    if st["skipped"]:
        logger.warning("%s: skipped %d of %d paragraphs without a package or description",
                       source, st["skipped"], st["paragraphs"])
    if stats is not None:
        for k, v in st.items():
            stats[k] = stats.get(k, 0) + v


def parse_translation_file(path: str | os.PathLike, stats: dict | None = None) -> Iterator[dict]:
    """Debian ``*_i18n_Translation-XX[.lz4|.gz|.xz|.bz2]`` -> iterator of dicts.

    Each dict has ``package``, ``md5`` (``Description-md5``), ``lang`` (``en``, ``de``, ...),
    ``synopsis`` (the first line of ``Description-XX``) and ``long`` (the continuation lines
    joined into text: wrapped lines with spaces, verbatim lines on their own line, `` .`` ->
    ``"\\n"``; empty string when there is none). Paragraphs without a package or a description
    are skipped; ``stats`` (if given) accumulates ``paragraphs``, ``entries``, ``skipped``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Translation file {path!r} does not exist")
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"Translation file {path!r} is not valid UTF-8: {e}") from e
    return parse_translation_text(text, stats, source=path)


def find_translation_files(lists_dir: str | os.PathLike = DEFAULT_LISTS_DIR) -> dict[str, list[str]]:
    """``{lang: [paths]}`` of the Translation files in ``lists_dir`` (sorted paths)."""
    lists_dir = os.fspath(lists_dir)
    if not os.path.isdir(lists_dir):
        raise FileNotFoundError(f"lists_dir {lists_dir!r} does not exist; {APT_HINT}")
    found: dict[str, list[str]] = {}
    for name in sorted(os.listdir(lists_dir)):
        m = _TRANSLATION_RE.search(name)
        full = os.path.join(lists_dir, name)
        if m and os.path.isfile(full):
            found.setdefault(m.group(1), []).append(full)
    return found


def split_for_package(package: str) -> str:
    """Deterministic split of a package: sha1(name) -> bucket 0..99; < 96 train, 96-97
    validation, 98-99 test."""
    bucket = int(hashlib.sha1(package.encode("utf-8")).hexdigest(), 16) % 100
    return "train" if bucket < 96 else ("validation" if bucket < 98 else "test")


def _document(synopsis: str, long: str) -> str:
    return synopsis + "\n" + long if long else synopsis


def build_debian_rows(
    lists_dir: str | os.PathLike = DEFAULT_LISTS_DIR, *, min_chars: int = 16, min_long_chars: int = 80
) -> tuple[dict[str, dict[str, list[dict]]], dict]:
    """The rows of the three Debian datasets, in memory: ``({name: {split: [row]}}, stats)``.

    ``en``: ``package, md5, text`` (text of >= ``min_chars`` characters); ``de-en``:
    ``package, md5, condition`` (German), ``target`` (English, >= ``min_chars``);
    ``summary``: ``package, md5, condition`` (long English description of >= ``min_long_chars``
    characters), ``target`` (synopsis). See the module doc for deduplication and splits.
    """
    files = find_translation_files(lists_dir)
    if not files.get("en"):
        raise FileNotFoundError(
            f"no English Translation files (*_i18n_Translation-en*) in {os.fspath(lists_dir)!r}; {APT_HINT}"
        )
    stats: dict = {"files": {lang: [os.path.basename(p) for p in ps] for lang, ps in sorted(files.items())
                             if lang in ("en", "de")}}
    # English: md5 -> (synopsis, long), canonical package = alphabetically first
    en: dict[str, tuple[str, str]] = {}
    canon: dict[str, str] = {}
    pst: dict = {}
    for path in files["en"]:
        for e in parse_translation_file(path, pst):
            if e["md5"] not in en:
                en[e["md5"]] = (e["synopsis"], e["long"])
            if e["md5"] not in canon or e["package"] < canon[e["md5"]]:
                canon[e["md5"]] = e["package"]
    stats["parse_en"] = pst
    de: dict[str, tuple[str, str]] = {}
    dst: dict = {}
    for path in files.get("de", []):
        for e in parse_translation_file(path, dst):
            de.setdefault(e["md5"], (e["synopsis"], e["long"]))
    stats["parse_de"] = dst
    if not files.get("de"):
        logger.warning("no German Translation file in %r: the de-en dataset will be empty; %s",
                       os.fspath(lists_dir), APT_HINT)

    out: dict[str, dict[str, list[dict]]] = {name: {s: [] for s in SPLITS} for name in ("en", "de-en", "summary")}
    dropped = {"en_short": 0, "de_unmatched": 0, "de_short": 0, "summary_short": 0}
    for md5, pkg in sorted(canon.items(), key=lambda kv: (kv[1], kv[0])):
        split = split_for_package(pkg)
        syn, long = en[md5]
        text = _document(syn, long)
        if len(text) >= min_chars:
            out["en"][split].append({"package": pkg, "md5": md5, "text": text})
        else:
            dropped["en_short"] += 1
        if md5 in de:
            cond = _document(*de[md5])
            if len(text) >= min_chars and cond.strip():
                out["de-en"][split].append({"package": pkg, "md5": md5, "condition": cond, "target": text})
            else:
                dropped["de_short"] += 1
        if len(long) >= min_long_chars and syn.strip():
            out["summary"][split].append({"package": pkg, "md5": md5, "condition": long, "target": syn})
        else:
            dropped["summary_short"] += 1
    dropped["de_unmatched"] = sum(1 for md5 in de if md5 not in canon)
    stats["dropped"] = dropped
    stats["unique_en_descriptions"] = len(en)
    stats["counts"] = {name: {s: len(rows) for s, rows in d.items()} for name, d in out.items()}
    return out, stats


def prepare_debian(
    out_dir: str | os.PathLike,
    lists_dir: str | os.PathLike = DEFAULT_LISTS_DIR,
    *,
    min_chars: int = 16,
    min_long_chars: int = 80,
) -> dict:
    """Build the Debian corpora and ``save_to_disk`` them under ``out_dir/{en,de-en,summary}``.

    Each is a ``datasets.DatasetDict`` with splits train / validation / test (see
    :func:`build_debian_rows` for the columns). Writes ``out_dir/stats.json`` (counts per split,
    parse and drop counts) and a short ``out_dir/README.md``; returns the stats dict.
    Deterministic (no seed): the same lists give the same datasets.
    """
    datasets = _import_datasets()
    t0 = time.time()
    rows, stats = build_debian_rows(lists_dir, min_chars=min_chars, min_long_chars=min_long_chars)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    columns = {"en": ["package", "md5", "text"], "de-en": ["package", "md5", "condition", "target"],
               "summary": ["package", "md5", "condition", "target"]}
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for name, splits in rows.items():
            features = datasets.Features({c: datasets.Value("string") for c in columns[name]})
            dd = datasets.DatasetDict({
                s: datasets.Dataset.from_dict({c: [r[c] for r in splits[s]] for c in columns[name]}, features=features)
                for s in SPLITS
            })
            dd.save_to_disk(os.path.join(out_dir, name))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    stats["min_chars"], stats["min_long_chars"] = min_chars, min_long_chars
    stats["seconds"] = round(time.time() - t0, 2)
    with open(os.path.join(out_dir, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
    lines = ["# Debian package-description corpora (elf_fast.debian.prepare_debian)", "",
             f"Source: {', '.join(sum(stats['files'].values(), []))}", "",
             "| dataset | train | validation | test |", "|---|---|---|---|"]
    lines += [f"| {n} | " + " | ".join(str(c[s]) for s in SPLITS) + " |" for n, c in stats["counts"].items()]
    lines += ["", "Splits: sha1(package) % 100 -> <96 train, 96-97 validation, 98-99 test. See stats.json.", ""]
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return stats


def make_fixtures(
    out_dir: str | os.PathLike,
    lists_dir: str | os.PathLike = DEFAULT_LISTS_DIR,
    *,
    sizes: Mapping[str, Sequence[int]] | None = None,
    max_chars: int = 700,
) -> dict:
    """Small jsonl fixtures ``out_dir/{en,de-en,summary}/{train,validation,test}.jsonl`` from the
    real corpora: per split, the first rows (of at most ``max_chars`` characters per field)
    in the order of sha1(md5) — a deterministic spread over the alphabet."""
    sizes = dict(sizes or {"en": (300, 40, 40), "de-en": (200, 30, 30), "summary": (200, 30, 30)})
    rows, _ = build_debian_rows(lists_dir)
    counts: dict = {}
    for name, splits in rows.items():
        d = os.path.join(os.fspath(out_dir), name)
        os.makedirs(d, exist_ok=True)
        counts[name] = {}
        for split, n in zip(SPLITS, sizes[name]):
            pool = [r for r in splits[split] if all(len(v) <= max_chars for k, v in r.items() if k not in ("package", "md5"))]
            pool.sort(key=lambda r: hashlib.sha1(r["md5"].encode()).hexdigest())
            chosen = sorted(pool[:n], key=lambda r: (r["package"], r["md5"]))
            with open(os.path.join(d, f"{split}.jsonl"), "w", encoding="utf-8") as f:
                for r in chosen:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            counts[name][split] = len(chosen)
    return counts


# ----------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None, prog: str = "python -m elf_fast.debian") -> int:
    from elf_fast.cli import ArgumentParser  # usage errors: one "error: ..." line, status 2

    p = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare-debian", help="build en / de-en / summary from Debian package descriptions")
    a.add_argument("--out", required=True, help="output folder (gets en/, de-en/, summary/, stats.json)")
    a.add_argument("--lists-dir", default=DEFAULT_LISTS_DIR, help="apt lists folder (default %(default)s)")
    a.add_argument("--min-chars", type=int, default=16, help="minimum characters of an English document")
    a.add_argument("--min-long-chars", type=int, default=80, help="minimum characters of a summary condition")
    b = sub.add_parser("make-fixtures", help="small jsonl fixtures for tests")
    b.add_argument("--out", required=True)
    b.add_argument("--lists-dir", default=DEFAULT_LISTS_DIR)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "prepare-debian":
        st = prepare_debian(args.out, args.lists_dir, min_chars=args.min_chars, min_long_chars=args.min_long_chars)
        for name, c in st["counts"].items():
            print(f"{name:8s} " + "  ".join(f"{s}={c[s]}" for s in SPLITS))
        print(f"saved under {args.out} in {st['seconds']} s (stats.json has the details)")
    else:
        counts = make_fixtures(args.out, args.lists_dir)
        for name, c in counts.items():
            print(f"{name:8s} " + "  ".join(f"{s}={c[s]}" for s in SPLITS))
    return 0


if __name__ == "__main__":
    from elf_fast.cli import run

    sys.exit(run(main))

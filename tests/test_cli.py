"""Every command-line entry point ends a user error with one line ``error: ...`` and exit status 2,
without a traceback (elf_fast.cli.run); ELF_FAST_DEBUG=1 shows the traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elf_fast.cli import run

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "ELF_FAST_DEBUG": "",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _cli(*args, env=ENV):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _assert_user_error(r, *words):
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), r.stderr[-2000:]


@pytest.mark.parametrize("args, words", [
    (["-m", "elf_fast.sample", "--checkpoint", "no/such/run"], ["no checkpoint at", "no/such/run"]),
    (["-m", "elf_fast.sample", "--device", "tpu"], ["'tpu' is not a device"]),
    (["-m", "elf_fast.evaluate", "run", "--texts", "missing.jsonl"], ["missing.jsonl", "does not exist"]),
    (["-m", "elf_fast.export_builtin", "no/such/run"], ["no ckpt_<step>/ema.safetensors"]),
    (["-m", "elf_fast.data", "prepare-debian", "--out", "/tmp/elf_fast_never", "--lists-dir", "no/such/lists"],
     ["no/such/lists"]),
    (["training/train.py", "--config", "training/configs/test_tiny.yaml", "--override", "optim.blr=-1e-3"],
     ["optim.blr must be > 0, got -0.001"]),
    (["training/train.py", "--config", "no/such.yaml"], ["config file 'no/such.yaml' does not exist"]),
    (["-m", "elf_fast", "--positions", "0"], ["argument --positions: must be an integer in [1, "]),
    (["-m", "elf_fast.judge", "--data", "no/such/data", "--out", "/tmp/elf_fast_judge_never", "--steps", "1"],
     ["no/such/data"]),
])
def test_entry_points_end_user_errors_in_one_line(args, words):
    _assert_user_error(_cli(*args), *words)


def test_argparse_errors_are_one_error_line_and_status_2():
    r = _cli("-m", "elf_fast.sample", "--num-samples", "0")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "error: argument --num-samples: must be an integer in [1, 100000000], got 0 "
        "(see python -m elf_fast.sample --help)"], r.stderr


def test_debug_shows_the_traceback():
    r = _cli("-m", "elf_fast.sample", "--checkpoint", "no/such/run", env={**ENV, "ELF_FAST_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr


def test_run_keeps_tracebacks_for_bugs_and_maps_user_errors(capsys):
    def bad_value(argv):
        raise ValueError("steps must be >= 1\nsecond line")

    def exits(argv):
        raise SystemExit("error: this checkpoint is conditional")

    def bug(argv):
        raise KeyError("a bug")

    assert run(bad_value) == 2 and capsys.readouterr().err == "error: steps must be >= 1; second line\n"
    assert run(exits) == 2 and capsys.readouterr().err == "error: this checkpoint is conditional\n"
    assert run(lambda argv: 0) == 0
    with pytest.raises(KeyError):
        run(bug)


def test_a_missing_optional_package_names_its_extra(monkeypatch, capsys):
    from elf_fast import metrics
    from elf_fast.extras import MissingDependency

    for name in [m for m in sys.modules if m == "rouge_score" or m.startswith("rouge_score.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # as if not installed
    with pytest.raises(MissingDependency, match=r"ROUGE needs the package 'rouge-score'.*elf_fast\[eval\]"):
        metrics.rouge(["a"], ["a"])

    def score(argv):
        return metrics.rouge(["a"], ["a"])

    assert run(score) == 2 and "pip install 'elf_fast[eval]'" in capsys.readouterr().err

"""elf_fast.cpu_alloc: train.cpu_malloc_reuse's glibc thresholds (each check in a fresh process:
mallopt changes the whole process)."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from elf_fast.cpu_alloc import reuse_freed_memory
from elf_fast.train_config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "test_tiny.yaml"
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# minor page faults over 24 cycles of allocating, filling and freeing a 64 MiB tensor (16,384
# pages), after one warm-up cycle
CYCLES = """
import resource, sys, torch
from elf_fast.cpu_alloc import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else None
def cycle():
    x = torch.empty(16 << 20)  # 64 MiB of float32
    x.fill_(1.0)
    del x
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(24):
    cycle()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode):
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_reuse_keeps_large_freed_blocks_mapped():
    # glibc's own behaviour: a 64 MiB block is above its mmap threshold (at most 32 MiB), so every
    # cycle maps fresh pages and faults each in; with reuse the block comes back from the heap
    # (seen: 393,240 faults against 16,384-32,768, the heap's growth in the first cycles, once)
    applied, reused = _faults("reuse")
    assert applied == "True"
    _, plain = _faults("plain")
    pages = 24 * (64 << 20) // 4096
    assert plain > 0.9 * pages, plain
    assert reused < 0.25 * pages, reused


def test_bad_thresholds_are_refused():
    for bad in (0, -1, 2**31, 1.5, True, "256M"):
        with pytest.raises(ValueError, match="must be an int"):
            reuse_freed_memory(mmap_threshold=bad)
        with pytest.raises(ValueError, match="must be an int"):
            reuse_freed_memory(trim_threshold=bad)


def test_train_config_switch():
    assert load_config(str(CONFIG), []).train.cpu_malloc_reuse is True
    assert load_config(str(CONFIG), ["train.cpu_malloc_reuse=false"]).train.cpu_malloc_reuse is False

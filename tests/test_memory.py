"""The driver hands the memory it freed back to the system while a job runs (memory.py)."""

from __future__ import annotations

import pickle
import sys
import time
from types import SimpleNamespace

import pytest

from benchmarks.scale import rss_gib
from tuning_platform.execution import memory
from tuning_platform.execution.memory import FreedMemoryReturned, return_freed_memory

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")


@linux_only
def test_memory_freed_between_chunks_in_use_goes_back_to_the_system():
    kept, freed = [], []
    for i in range(100_000):  # 2.0-2.6 KB each: from malloc, not Python's small-object allocator
        (kept if i % 16 == 0 else freed).append(bytes(2000 + (i % 7) * 100))
    del freed  # about 200 MB free between chunks still in use: malloc keeps its pages
    before = rss_gib()
    assert return_freed_memory()
    assert before - rss_gib() > 100 / 1024, (before, rss_gib())
    assert len(kept) == 6250


def test_a_run_returns_freed_memory_at_most_once_every_few_seconds(monkeypatch):
    now = [time.monotonic()]  # the callback's monotonic clock, moved by the test, not waited for
    monkeypatch.setattr(memory, "time", SimpleNamespace(monotonic=lambda: now[0]))
    trims = []
    monkeypatch.setattr(memory, "return_freed_memory", lambda: trims.append(now[0]))
    callback = FreedMemoryReturned(every_s=1.0)
    # The period starts with the run's first step, not when the callback was made: Tune pickles
    # it with the run config, and `--resume` restores it later, maybe after a reboot.
    now[0] += 1.05
    callback.on_step_end(iteration=1, trials=[])
    callback.on_step_end(iteration=2, trials=[])
    assert trims == []  # a run's first second
    now[0] += 1.05
    callback.on_step_end(iteration=3, trials=[])
    callback.on_step_end(iteration=4, trials=[])
    assert len(trims) == 1


def test_the_callback_survives_tune_saving_the_run_config():
    """Tune pickles the run config, callbacks included, with the job's state (`tuner.pkl`)."""
    return_freed_memory()  # the C function found and cached: it must not be part of the callback
    restored = pickle.loads(pickle.dumps(FreedMemoryReturned(every_s=5.0)))
    assert restored.every_s == 5.0

"""The worker's collector settings (runner/worker/collector.py, issue 11), in a child interpreter:
they are process-wide and would change the test process's own collections."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.subprocess

CHILD = textwrap.dedent(
    """
    import gc, json
    from runner.worker import collector
    kept = [[i] for i in range(5_000)]  # alive at tune(): frozen, never walked again
    collector.tune()
    for _ in range(200):
        burst = [[i] for i in range(2_000)]  # a job's allocations, freed soon after
        del burst
    after_bursts = collector.stats()
    for _ in range(3):
        gc.collect()
    print(json.dumps({"threshold": gc.get_threshold(), "bursts": after_bursts,
                      "collected": collector.stats()}))
    """
)


def _child() -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_tune_freezes_startup_objects_and_bursts_do_not_trigger_collections():
    seen = _child()
    assert seen["threshold"][0] == 20_000
    assert seen["bursts"]["gc_frozen"] >= 5_000
    # 200 bursts of 2,000 lists: ~400 collections at CPython's default threshold (700)
    assert seen["bursts"]["gc_young"] <= 2, seen
    # counted from tune(): the explicit full collections show, start-up's do not
    assert seen["collected"]["gc_oldest"] == 3, seen

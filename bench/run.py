"""`python -m bench.run` (`make bench`): every benchmark (issues 4, 8, 9 and 10), then the report.
`python -m bench.run --only limits` runs item 8 alone into the existing results.json (`--only
limits.revoked`: its revoked-key part alone); `--without limits` runs the rest and keeps item 8's
last figures."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from bench import (
    calls,
    concurrency,
    enqueue,
    growth,
    limits,
    machine,
    peers,
    report,
    soak,
    startup,
    throughput,
)
from bench.databases import ADMIN_URL, Target, fresh_target

log = logging.getLogger("bench")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if sys.argv[1:] == ["--only", "limits"]:
        _only_limits()
        return
    if sys.argv[1:] == ["--only", "limits.revoked"]:
        _only_revoked()
        return
    started = time.perf_counter()
    pg_url = Target(ADMIN_URL, "postgresql").libpq_url
    results: dict[str, Any] = {"machine": machine.describe(pg_url), "postgresql": {}, "sqlite": {}}
    for backend in ("postgresql", "sqlite"):
        results[backend]["enqueue"] = _step(f"{backend}: enqueue", enqueue.run, backend)
        results[backend]["throughput"] = _step(f"{backend}: throughput", throughput.run, backend)
        results[backend]["concurrency"] = _step(f"{backend}: concurrency", concurrency.run, backend)
    results["postgresql"]["peers"] = _step("peers", _peers)
    results["postgresql"]["growth"] = _step("growth", growth.run)
    results["startup"] = _step("start-up", startup.run)
    results["calls"] = _step("model calls", calls.run)
    results["soak"] = {**_last().get("soak", {}), "small": _step("soak", _small_soak)}
    if sys.argv[1:] == ["--without", "limits"]:  # keep item 8's last figures (40 minutes)
        results["limits"] = _last()["limits"]
    else:
        results["limits"] = _step("limits", limits.run)
    results["seconds"] = round(time.perf_counter() - started)
    report.write(results)
    log.info("done in %d s: bench/results.json, bench/RESULTS.md", results["seconds"])


def _only_limits() -> None:
    results = json.loads((report.HERE / "results.json").read_text())
    results["limits"] = _step("limits", limits.run)
    results["limits"]["date"] = machine.describe(Target(ADMIN_URL, "postgresql").libpq_url)["date"]
    report.write(results)


def _only_revoked() -> None:
    """Re-measure item 8's revoked key alone (a minute) into the existing results."""
    from runner.simulator.server import running_simulator

    results = json.loads((report.HERE / "results.json").read_text())
    with running_simulator() as sim:
        results["limits"]["revoked"] = _step("limits: revoked key", limits.revoked, sim)
    report.write(results)


def _last() -> dict[str, Any]:
    """The results of the last run (figures a partial run keeps)."""
    return dict(json.loads((report.HERE / "results.json").read_text()))


def _small_soak() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d"), "plans": soak.run(small=True)}


def _peers() -> dict[str, float]:
    with fresh_target("postgresql", "peers") as target:
        return peers.run(target)


def _step(label: str, func: Any, *args: Any) -> Any:
    log.info("%s ...", label)
    started = time.perf_counter()
    result = func(*args)
    log.info("%s: %.0f s %s", label, time.perf_counter() - started, result)
    return result


if __name__ == "__main__":
    main()

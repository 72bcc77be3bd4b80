"""bench/results.json and bench/RESULTS.md from one run's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def write(results: dict[str, Any]) -> None:
    (HERE / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (HERE / "RESULTS.md").write_text(markdown(results))


def markdown(r: dict[str, Any]) -> str:
    """The Markdown the README's Performance section shows."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench.run`); the raw numbers are in `results.json`.",
        "",
        *_machine(r["machine"]),
        "",
    ]
    for title, rows in _sections(r):
        lines += [f"## {title}", "", "| measure | value | goal |", "| --- | --- | --- |"]
        lines += [f"| {m} | {v} | {g} |" for m, v, g in rows]
        lines.append("")
    return "\n".join([*lines, *_soak(r.get("soak", {})), *_claim_plan(r["postgresql"]["growth"])])


def _soak(soak: dict[str, Any]) -> list[str]:
    """Item 9, the soak: the full one (`make soak`) and the small one (`make bench`) if run."""
    lines = []
    for size, how in (("full", "make soak"), ("small", "make bench")):
        if size in soak:
            lines += [f"## 9. Soak, {size} (`{how}`, {soak[size]['date']})", ""]
            lines += [*soak_table(soak[size]["plans"]), ""]
    return lines


def _claim_plan(g: dict[str, Any]) -> list[str]:
    size, largest = max(g["sizes"].items(), key=lambda item: int(item[0]))
    return [
        f"## Claim plan with {int(size):,} finished jobs (EXPLAIN ANALYZE, PostgreSQL)",
        "",
        "```",
        *largest["claim_plan"],
        "```",
        "",
    ]


def _machine(m: dict[str, Any]) -> list[str]:
    return [
        "| machine | versions | date |",
        "| --- | --- | --- |",
        f"| {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']} "
        f"| Python {m['python']}, PostgreSQL {m['postgres']}, SQLite {m['sqlite']}, "
        f"SQLAlchemy {m['sqlalchemy']}, psycopg {m['psycopg']}, procrastinate "
        f"{m['procrastinate']}, pgqueuer {m['pgqueuer']} | {m['date']} |",
    ]


def _sections(r: dict[str, Any]) -> list[tuple[str, list[tuple[str, str, str]]]]:
    pg, lite = r["postgresql"], r["sqlite"]
    return [
        ("1. Enqueue 150,000 jobs (PostgreSQL)", _enqueue_rows(pg["enqueue"])),
        ("2. Claim and complete 20,000 no-op jobs (PostgreSQL)", _throughput_rows(pg)),
        *_concurrency_sections("3.", "PostgreSQL", pg["concurrency"]),
        ("4. Growth (PostgreSQL)", _growth_rows(pg["growth"])),
        ("5. SQLite: enqueue", _enqueue_rows(lite["enqueue"])),
        (
            "5. SQLite: claim and complete 20,000 no-op jobs",
            [("ours", f"{lite['throughput']['ours_jobs_per_s']:.0f} jobs/s", "(no peers)")],
        ),
        *_concurrency_sections("5.", "SQLite", lite["concurrency"]),
        ("6. Start-up (medians of 5)", _startup_rows(r["startup"])),
        ("7. The model call (simulator in its own process)", _call_rows(r["calls"])),
        *_limits_sections(r.get("limits")),
    ]


def _limits_sections(lim: dict[str, Any] | None) -> list[tuple[str, list[tuple[str, str, str]]]]:
    if lim is None:
        return []
    when = f" (run {lim['date']})" if "date" in lim else ""
    p, learned, revoked = lim["paced"], lim["learned"], lim["revoked"]
    title = (
        f"8. Provider limits: {p['jobs']:,} jobs at 600 RPM / 1,000,000 TPM, ~2 s lognormal, "
        f"3 runners x 2 x 16 (PostgreSQL){when}"
    )
    return [
        (
            title,
            _limited_rows("--rpm/--tpm set", p, 1.1, "<= 600")
            + _limited_rows("learned", learned, 1.25, "(the first burst precedes the headers)"),
        ),
        (
            f"8. A key revoked after 100 calls of {revoked['jobs']} jobs (1 runner x 2 x 16)",
            [
                (
                    "calls that reached the provider after the first rejection",
                    str(revoked["calls_after_first_rejection"]),
                    "<= 3 (K)",
                ),
                ("jobs failed", str(revoked["failed"]), "0"),
                ("jobs kept queued (not answered before the pause)", str(revoked["queued"]), ""),
                ("models paused", str(revoked["models_paused"]), "1"),
            ],
        ),
    ]


def _limited_rows(
    label: str, x: dict[str, Any], goal: float, window_goal: str
) -> list[tuple[str, str, str]]:
    return [
        (
            f"{label}: elapsed vs limit-bound",
            f"{x['elapsed_s']:.0f} s / {x['limit_bound_s']:.0f} s = {x['ratio']:.3f}x",
            f"<= {goal}x",
        ),
        (f"{label}: jobs failed", str(x["failed"]), "0"),
        (f"{label}: 429s per job", f"{x['rate_limited_per_job']:.4f}", "<= 0.05"),
        (f"{label}: most admitted in any 60 s", str(x["max_admitted_in_60s"]), window_goal),
    ]


def _call_rows(c: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        ("client CPU per call, one at a time", f"{c['cpu_ms_per_call_sequential']:.2f} ms", ""),
        (
            f"client CPU per call, {c['concurrent_threads']} job threads",
            f"{c['cpu_ms_per_call_concurrent']:.2f} ms",
            "",
        ),
        (
            f"a trickling server (1 byte/s) cut after the {c['deadline_s']:g} s deadline",
            f"+{c['trickle_deadline_overrun_s'] * 1000:.0f} ms",
            "<= +1000 ms",
        ),
    ]


def _startup_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        ("supervisor imports, CPU", f"{s['supervisor_import_cpu_s']:.2f} s", "no worker stack"),
        ("a worker process's imports, CPU", f"{s['worker_import_cpu_s']:.2f} s", ""),
        (
            "`promptbatch run --drain`, empty SQLite, 2 processes",
            f"{s['empty_drain_wall_s']:.2f} s",
            "",
        ),
    ]


def _enqueue_rows(e: dict[str, Any]) -> list[tuple[str, str, str]]:
    cli, call, floor = e["ours_cli_s"], e["ours_in_process_s"], e["floor_s"]
    return [
        ("`promptbatch enqueue`, cold / re-run", f"{cli['cold']:.2f} s / {cli['rerun']:.2f} s", ""),
        (
            "`enqueue_batch` in process, cold / re-run",
            f"{call['cold']:.2f} s / {call['rerun']:.2f} s",
            "",
        ),
        (
            "bare INSERT ... SELECT ... ON CONFLICT (floor), cold / re-run",
            f"{floor['cold']:.2f} s / {floor['rerun']:.2f} s",
            "",
        ),
        (
            "ratio CLI / floor, cold / re-run",
            f"{e['ratio_cold']:.2f} / {e['ratio_rerun']:.2f}",
            "<= 1.5",
        ),
        (
            "ratio in process / floor, cold / re-run",
            f"{e['ratio_in_process_cold']:.2f} / {e['ratio_in_process_rerun']:.2f}",
            "<= 1.5",
        ),
    ]


def _throughput_rows(pg: dict[str, Any]) -> list[tuple[str, str, str]]:
    t, p = pg["throughput"], pg["peers"]
    ours = t["ours_jobs_per_s"]
    return [
        (f"promptbatch ({t['in_flight']} in flight)", f"{ours:.0f} jobs/s", "ahead of both"),
        (
            "procrastinate (no-op task)",
            f"{p['procrastinate_jobs_per_s']:.0f} jobs/s "
            f"(ours x{ours / p['procrastinate_jobs_per_s']:.2f})",
            "",
        ),
        (
            "pgqueuer (no-op entrypoint)",
            f"{p['pgqueuer_jobs_per_s']:.0f} jobs/s (ours x{ours / p['pgqueuer_jobs_per_s']:.2f})",
            "",
        ),
        (
            "pgbench floor: claim + complete SQL alone",
            f"{t['pgbench_floor_jobs_per_s']:.0f} jobs/s (ours x{t['ours_over_floor']:.2f})",
            ">= x0.5",
        ),
        (
            "group commit CPU per job, real-size answers (32 written + 32 claimed per transaction)",
            f"{t['commit_cpu_ms_per_job']:.3f} ms" if "commit_cpu_ms_per_job" in t else "-",
            "",
        ),
    ]


def _concurrency_sections(
    number: str, backend: str, scenarios: dict[str, Any]
) -> list[tuple[str, list[tuple[str, str, str]]]]:
    return [
        (
            f"{number} {c['jobs']:,} jobs, simulator at {c['latency_s']:g} s"
            f"{_spread(c)}, {c['in_flight']:,} "
            f"in flight ({c['processes']} processes x {c['concurrency']}, {backend})",
            _concurrency_rows(c),
        )
        # in the order they run (results.json sorts its keys by name)
        for c in sorted(scenarios.values(), key=lambda c: (c["in_flight"], c["jitter"]))
    ]


def _spread(c: dict[str, Any]) -> str:
    if not c.get("jitter"):
        return ""
    return f" lognormal (sigma {c['jitter']:g}, mean {c['mean_latency_s']:.2f} s)"


def _concurrency_rows(c: dict[str, Any]) -> list[tuple[str, str, str]]:
    connections = c.get("peak_db_connections")
    rows = [
        (
            "first claim to last completion",
            f"{c['jobs_per_s_span']:.1f} jobs/s "
            f"({c['fraction_of_ideal_span']:.0%} of the ideal {c['ideal_jobs_per_s']:.0f})",
            ">= 90%",
        ),
        (
            "10th to 90th percentile completion (every slot busy)",
            f"{c['jobs_per_s_middle']:.1f} jobs/s ({c['fraction_of_ideal_middle']:.0%})",
            "",
        ),
        (
            "whole `promptbatch run --drain`, start-up and exit included",
            f"{c['jobs_per_s_wall']:.1f} jobs/s ({c['fraction_of_ideal_wall']:.0%})",
            "",
        ),
        ("mean call as the runner timed it", f"{c['mean_call_s']:.2f} s", ""),
        (
            "runner CPU per job: all / less start-up and exit",
            f"{c['runner_cpu_ms_per_job']:.2f} / {c['runner_cpu_ms_per_job_steady']:.2f} ms "
            f"(start-up {c['runner_startup_cpu_s']:.1f} s)",
            "<= 2 ms",
        ),
        (
            f"simulator CPU per job ({c['simulator_processes']} processes)",
            f"{c['simulator_cpu_ms_per_job']:.2f} ms",
            "",
        ),
        ("peak RSS, supervisor + workers", f"{c['peak_rss_mib']:.0f} MiB", "<= 1024 MiB"),
    ]
    if connections is not None:
        limit = 2 * c["processes"] + 2
        rows.append(("peak database connections", str(connections), f"<= {limit}"))
    return rows


def _growth_rows(g: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [
        (
            f"{int(size):,} finished + backlog: claim median / p99; Overview; Jobs",
            f"{s['claim_median_ms']:.1f} / {s['claim_p99_ms']:.1f} ms; "
            f"{s['overview_ms']:.0f} ms; {s['jobs_ms']:.0f} ms",
            "console < 1000 ms",
        )
        for size, s in g["sizes"].items()
    ]
    rows.append(
        (
            "claim growth 10k -> 1M, median / p99",
            f"x{g['claim_median_growth']:.2f} / x{g['claim_p99_growth']:.2f}",
            "<= x1.5",
        )
    )
    return rows


SOAK_ROWS: tuple[tuple[str, str | tuple[str, str], str], ...] = (
    ("jobs", "jobs", ""),
    ("faults injected", "faults", ""),
    ("jobs not succeeded (lost)", "jobs_not_succeeded", "0"),
    ("jobs completed twice", "jobs_completed_twice", "0"),
    ("succeeded jobs without 1 response", "succeeded_jobs_without_exactly_one_response", "0"),
    ("attempt rows / sum of attempt_count", ("attempt_rows", "attempt_count_sum"), "equal"),
    ("paid calls (simulator 200s)", "paid_calls", ""),
    ("paid calls never stored", "paid_calls_never_stored", ""),
    ("... of paid calls", "paid_calls_never_stored_fraction", ""),
    ("... answered to a worker killed during its call", "answered_to_a_killed_client", ""),
    ("... delivered to a live worker", "delivered_calls_never_stored", ""),
    ("... delivered, of paid calls", "delivered_never_stored_fraction", "<= 0.5%"),
    ("a killed worker's jobs claimable again, max s", "killed_worker_jobs_back_max_s", "<= 2"),
    ("orphaned workers stopped within, max s", "orphan_stop_max_s", ""),
    ("orphans left", "orphans_left", "0"),
    ("wall s / fault-free s", ("wall_s", "fault_free_wall_s"), ""),
    ("wall vs fault-free", "wall_vs_fault_free", "<= 1.5x"),
)


def soak_table(plans: dict[str, Any]) -> list[str]:
    """The soak's Markdown table: one column per plan, and the issue's goal."""
    names = list(plans)
    lines = ["| | " + " | ".join(names) + " | goal |", "|---" * (len(names) + 2) + "|"]
    for label, key, goal in SOAK_ROWS:
        cells = [_cell(plans[n], key) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {goal} |")
    return lines


def _cell(figures: dict[str, Any], key: str | tuple[str, str]) -> str:
    if isinstance(key, tuple):
        return " / ".join(_cell(figures, k) for k in key)
    value = figures.get(key)
    if isinstance(value, float) and key.endswith("fraction"):
        return f"{value:.2%}"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    return "-" if value is None else str(value)

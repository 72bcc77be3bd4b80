from db import catalog, queue, stats
from db.catalog import NewPrompt
from db.types import JobStatus


def test_enqueue_claim_roundtrip(engine):
    catalog.import_prompts(engine, [NewPrompt("best crm?", "crm", 3), NewPrompt("best vpn?", None, 2)])
    catalog.add_model(engine, provider="compatible", name="m1", base_url="http://x/v1")
    catalog.add_model(engine, provider="compatible", name="m2", base_url="http://x/v1", max_concurrency=1)
    r = queue.enqueue_batch(engine, "2026-11-30", max_attempts=3)
    assert (r.created, r.existing) == (10, 0)
    r = queue.enqueue_batch(engine, "2026-11-30", max_attempts=3)
    assert (r.created, r.existing) == (0, 10)
    jobs = queue.claim_jobs(engine, "w1", 10, lease_seconds=30)
    assert len(jobs) == 6  # 5 for m1 + 1 for m2 (cap 1)
    assert sorted(j.model_name for j in jobs).count("m2") == 1
    assert stats.batch_counts(engine, "2026-11-30").get(JobStatus.PROCESSING) == 6

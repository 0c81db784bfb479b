"""Scheduled work fanned out (escrow.services.fanout): the scheduled run, with a jobs queue (SQS, faked by moto),
plans chunks of due work; JobsWorkerFunction, invoked with real SQS event shapes, works them off against MariaDB and
the Toss sandbox; a chunk delivered twice doubles nothing; a message of no use is reported alone (partial batch
response); and worker processes killed mid-chunk lose and double nothing (bench.jobs_fanout, its own stack)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.events import Context
from tests.support.functions import ROOT, load_function

pytestmark = pytest.mark.e2e

CHUNK = 7


class WorkerContext(Context):
    function_name = "jobs-worker"

    def get_remaining_time_in_millis(self) -> int:
        return 150_000


@pytest.fixture()
def jobs_queue(aws: Any, api: str) -> Iterator[tuple[Any, str]]:
    """The jobs queue with its dead-letter queue (as the template makes them), configured for the scheduled run."""
    from escrow.config import reset_settings

    sqs, _ = aws
    dlq = sqs.create_queue(QueueName="escrow-jobs-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName="escrow-jobs",
        Attributes={
            "VisibilityTimeout": "60",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
        },
    )["QueueUrl"]
    os.environ.update({"JOBS_QUEUE_URL": url, "JOBS_CHUNK_SIZE": str(CHUNK)})
    reset_settings()
    yield sqs, url
    os.environ.pop("JOBS_QUEUE_URL", None)
    os.environ.pop("JOBS_CHUNK_SIZE", None)
    reset_settings()
    sqs.delete_queue(QueueUrl=url)
    sqs.delete_queue(QueueUrl=dlq)


def _receive_all(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not batch:
            return messages
        messages += batch


def _lambda_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """What Lambda's SQS event source mapping hands the function for these received messages."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "ap-northeast-2",
            }
            for m in messages
        ]
    }


@pytest.fixture()
def seeded(sandbox: Any, database_url: str) -> Callable[..., dict[str, Any]]:
    """Requests due for release and overdue ones (half with a paid share to refund), as bench.jobs_scale seeds them."""
    from bench.jobs_scale import Seeder

    def seed(due: int, overdue: int) -> dict[str, Any]:
        from datetime import UTC, datetime, timedelta

        seeder = Seeder(database_url, sandbox)
        store = f"fan_{os.urandom(3).hex()}"
        seeder.store(store)
        past = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
        released = seeder.rooms(
            due, stores=[store], request_status="completed", shares=lambda k: ["paid"] * 2, release_at=past
        )
        expiring = seeder.rooms(
            overdue,
            stores=[store],
            request_status="pending",
            shares=lambda k: ["paid" if k % 2 == 0 and i == 0 else "pending" for i in range(2)],
            expires_at=past,
        )
        seeder.close()
        return {
            "due": {r.request_id for r in released},
            "overdue": {r.request_id for r in expiring},
            "paid_keys": {s.payment_key for r in expiring for s in r.shares if s.state == "paid"},
        }

    return seed


def test_the_schedule_plans_chunks_and_the_worker_works_them_off_once(
    jobs_queue: tuple[Any, str],
    seeded: Callable[..., dict[str, Any]],
    schedule: Callable[..., dict[str, Any]],
    sql: Any,
    sandbox: Any,
) -> None:
    sqs, url = jobs_queue
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    items = seeded(12, 10)

    report = schedule()  # the release function's scheduled run, with JOBS_QUEUE_URL set: it plans

    plan = report["plan"]
    assert plan["releases_planned"] >= 12 and plan["expiries_planned"] >= 10
    assert "release" not in report and "expire" not in report  # planned, not done by the run itself
    assert "publish" in report and "sellers" in report  # the jobs that stay in the scheduled run
    # While its chunks wait for a worker, the next scheduled run plans nothing new.
    again = schedule()
    assert again["plan"].get("plan_skipped_queue_busy") == 1

    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"job": "nonsense", "ids": [1]}))  # of no use
    received = _receive_all(sqs, url)
    bad = next(m for m in received if json.loads(m["Body"])["job"] == "nonsense")
    bodies = [json.loads(m["Body"]) for m in received if m is not bad]
    assert len(bodies) == plan["messages"]
    by_job: dict[str, list[int]] = {}
    for body in bodies:
        assert 1 <= len(body["ids"]) <= CHUNK and body["planned_at"]
        by_job.setdefault(body["job"], []).extend(body["ids"])
    for job, ids in by_job.items():
        assert len(ids) == len(set(ids)), f"an item of {job} in two chunks"
    assert items["due"] <= set(by_job["release"]) and items["overdue"] <= set(by_job["expire"])
    assert not items["due"] & set(by_job["expire"])
    with sql.cursor() as cur:
        cur.execute(
            f"SELECT COUNT(*) AS n FROM payment_requests WHERE id IN ({','.join(map(str, items['due']))}) "
            "AND status = 'completed'"
        )
        assert cur.fetchone()["n"] == 12  # nothing released yet: only planned

    # The worker, with SQS's own message shapes: several chunks in one event, and the message of no use.
    worker = load_function("jobs_worker")
    cancels_before = sandbox.core.store.stats()["cancels"]
    answers = [
        worker.lambda_handler(_lambda_event(received[i : i + 10], arn), WorkerContext())
        for i in range(0, len(received), 10)
    ]
    failures = [f["itemIdentifier"] for a in answers for f in a["batchItemFailures"]]
    assert failures == [bad["MessageId"]]  # only the message of no use comes back; every chunk went through

    def outcome() -> dict[str, Any]:
        with sql.cursor() as cur:
            cur.execute(
                "SELECT SUM(status = 'released') AS released, SUM(status = 'expired') AS expired FROM payment_requests "
                f"WHERE id IN ({','.join(map(str, items['due'] | items['overdue']))})"
            )
            row = dict(cur.fetchone())
            cur.execute(
                "SELECT COUNT(*) AS n FROM payment_cancels c JOIN payments p ON p.id = c.payment_id "
                f"WHERE p.payment_key IN ({','.join(['%s'] * len(items['paid_keys']))}) AND c.status = 'done'",
                list(items["paid_keys"]),
            )
            row["refunds_done"] = cur.fetchone()["n"]
            cur.execute(
                f"SELECT COUNT(*) AS n FROM ledger_entries WHERE payment_request_id IN "
                f"({','.join(map(str, items['due'] | items['overdue']))})"
            )
            row["ledger"] = cur.fetchone()["n"]
        with sandbox.core.store.lock:
            row["toss_cancels"] = sum(len(sandbox.state.payments[k].cancels) for k in items["paid_keys"])
        return row

    first = outcome()
    assert int(first["released"]) == 12 and int(first["expired"]) == 10
    assert first["refunds_done"] == first["toss_cancels"] == len(items["paid_keys"]) == 5
    assert sandbox.core.store.stats()["cancels"] - cancels_before >= 5

    # The same chunks delivered again (SQS delivers at least once): every item is re-checked, nothing is doubled.
    answers = [
        worker.lambda_handler(_lambda_event(received[i : i + 10], arn), WorkerContext())
        for i in range(0, len(received), 10)
    ]
    assert [f["itemIdentifier"] for a in answers for f in a["batchItemFailures"]] == [bad["MessageId"]]
    assert outcome() == first

    # The next plan hands out the payouts of what was released; the worker sends them, once each.
    for m in received:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    report = schedule(jobs=["payouts"])
    payout_chunks = [json.loads(m["Body"]) for m in _receive_all(sqs, url) if '"payouts"' in m["Body"]]
    assert report["plan"].get("payouts_planned", 0) >= 12
    assert all(c["budget"] > 0 for c in payout_chunks)


def test_the_worker_fails_only_the_chunk_it_cannot_finish(jobs_queue: tuple[Any, str]) -> None:
    """A chunk started with too little time left is reported failed (delivered again), the others are not."""
    sqs, url = jobs_queue
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    worker = load_function("jobs_worker")

    class Late(WorkerContext):
        def get_remaining_time_in_millis(self) -> int:
            return 59_000  # less than a chunk's reserve (a payout call may take 60 s)

    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"job": "release", "ids": [999_999_999]}))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"job": "release", "ids": [999_999_998]}))
    received = _receive_all(sqs, url)
    answer = worker.lambda_handler(_lambda_event(received, arn), WorkerContext())
    assert answer == {"batchItemFailures": []}  # nothing due among those ids: done, nothing to do
    with pytest.raises(Exception, match="All records failed"):
        worker.lambda_handler(_lambda_event(received, arn), Late())  # Lambda then retries the whole batch


def test_workers_killed_mid_chunk_lose_and_double_nothing(tmp_path: Path) -> None:
    """bench.jobs_fanout on its own stack: worker processes on the local jobs queue, SIGKILLed while they hold an
    expiry or refund chunk with a refund asked at Toss; the chunk is delivered again; afterwards our rows, the ledger
    and the sandbox agree (nothing lost, nothing doubled) and escrow.audit finds nothing."""
    report = tmp_path / "fanout.json"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}", "JOBS_CHUNK_SIZE": "10"}
    for name in ("DATABASE_URL", "TOSS_API_BASE", "EVENT_BUS_NAME", "OUTBOX_PUBLISHER", "JOBS_QUEUE_URL"):
        env.pop(name, None)  # the run sets up its own stack
    command = [
        sys.executable,
        "-m",
        "bench",
        "jobs",
        "--requests",
        "80",
        "--stores",
        "3",
        "--workers",
        "3",
        "--kill",
        "2",
        "--latency-ms",
        "40",
        "--json",
        str(report),
    ]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert report.exists(), run.stdout + run.stderr
    runs = json.loads(report.read_text())["fanout"]
    killed = [r for r in runs if r["killed"]]
    assert killed and killed[0]["killed"] >= 1, run.stdout
    assert killed[0]["deliveries"] > killed[0]["messages"], run.stdout  # the dead worker's chunk came again
    assert all(r["checks_ok"] for r in runs), run.stdout
    assert ", 0 findings" in killed[0]["audit"], run.stdout
    assert run.returncode == 0, run.stdout + run.stderr

"""JobsWorkerFunction: works off the chunks of scheduled work the planner (the scheduled run of ReleaseFunction)
puts on the jobs queue (`escrow.services.fanout`). SQS event source with ReportBatchItemFailures: a chunk that fails
as a whole (the database unavailable, out of time, a message of no use) is reported alone and delivered again, and
after the queue's maxReceiveCount moves to the jobs dead-letter queue (alarmed). Items that fail on their own are set
aside in `job_failures` by the job itself, as in the sequential run; the rest of their chunk goes on."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from escrow import db
from escrow.observability import lambda_entry, logger

processor = BatchProcessor(event_type=EventType.SQS)
RESERVE_MS = 60_000  # a chunk is not started with less time left than this (a payout call may take 60 s)


class _Invocation:
    context: Any = None


_invocation = _Invocation()


def _remaining_ms() -> int:
    getter = getattr(_invocation.context, "get_remaining_time_in_millis", None)
    return int(getter()) if getter else 900_000


def _out_of_time() -> bool:
    return _remaining_ms() < RESERVE_MS // 2


def record_handler(record: SQSRecord) -> dict[str, Any]:
    from escrow.services import fanout  # imported at the first chunk: cold start stays small

    if _remaining_ms() < RESERVE_MS:
        raise fanout.ChunkUnfinished("not started: too little time left in this invocation")
    from escrow.deadline import Deadline

    message = json.loads(record.body)
    # Toss calls fit in the invocation, with 20 s kept back to record their outcome.
    invocation = Deadline.from_context(_invocation.context, margin=20.0, fallback_seconds=_remaining_ms() / 1000)
    result = fanout.work(message, deadline=_out_of_time, invocation=invocation)
    logger.info(
        "jobs chunk done",
        extra={
            "job": message.get("job"),
            "items": len(message.get("ids") or []),
            "result": result,
            "message_id": record.message_id,
            "receive_count": record.attributes.approximate_receive_count,
        },
    )
    return result


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    db.new_invocation()
    _invocation.context = context
    answer = process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
    return dict(answer)


lambda_handler = lambda_entry(_handle, http=False)

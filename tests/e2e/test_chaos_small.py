"""A small chaos run (bench/chaos.py) in the suite: rooms paid, refunded (then paid again: the difference after a
partial refund, the whole share after a full one), regrouped (a participant removed, a member added), cancelled,
released and expired at once while Toss declines, loses answers and lags, and database connections are killed;
afterwards the schedule settles everything, every room is closed, and the ledger audit (Toss's record and the
rules of intent) finds nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.functions import ROOT

pytestmark = pytest.mark.e2e


def test_a_small_chaos_run_settles_with_no_audit_finding_and_no_500(tmp_path: Path) -> None:
    report_file = tmp_path / "chaos.json"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'layers/common'}{os.pathsep}{ROOT}",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    for name in ("DATABASE_URL", "TOSS_API_BASE", "EVENT_BUS_NAME", "OUTBOX_PUBLISHER"):
        env.pop(name, None)  # the run sets up its own stack; nothing of this session's may leak into it
    command = [
        sys.executable,
        "-m",
        "bench.chaos",
        "--rooms",
        "12",
        "--participants",
        "3",
        "--clients",
        "8",
        "--seed",
        "20261123",
        "--log-file",
        str(tmp_path / "services.log"),
        "--report-json",
        str(report_file),
        # About 20 s alone, longer beside the other suites' workers; a run still going after 8 minutes is stuck:
        # it prints every thread's stack (which wait it is in) and exits, and this test shows that with its log.
        "--watchdog",
        "480",
    ]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    log = tmp_path / "services.log"
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    assert report_file.exists(), run.stdout[-8000:] + run.stderr[-20000:] + "\n--- services.log (tail) ---\n" + tail
    result = json.loads(report_file.read_text())

    assert result["server_errors"] == [], run.stdout
    assert result["unexpected"] == {}, run.stdout  # every answer is one the flow's rules allow
    assert result["audit_findings"] == 0, result["audit_table"]
    assert result["cross_check"]["mismatches"] == [], run.stdout
    assert not any(result["unsettled"].values()), run.stdout
    assert run.returncode == 0, run.stdout + run.stderr
    # Every kind of fault really happened, and the rooms really went through their lifecycles.
    assert result["db_kills"] > 0
    assert result["faults"].get("lose_answer", 0) > 0 and result["faults"].get("latency", 0) > 0
    assert result["toss"]["approvals"] > 0 and result["toss"]["cancels"] > 0 and result["toss"]["payouts"] > 0
    assert set(result["requests_by_status"]) <= {"released", "cancelled", "expired"}
    assert result["rooms_left_open"] == 0
    # The lifecycles of issue 7 ran: paying again after a refund, removing and adding a participant.
    assert {
        "partial_refund_pay_difference_release",
        "refund_pay_again_release",
        "remove_participant_release",
        "add_participant_release",
    } <= set(result["flows"])
    assert run.stdout.rstrip().endswith("result: PASS")

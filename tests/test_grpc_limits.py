"""Big, slow and hostile inputs against the real `nemotron-edge serve`: what the service accepts is bounded
before any work, refusals cost no tokenization or rendering, a large request never holds up a small one,
a call that is over starts no further work, chat templates cannot loop forever, and the memory the service
reports stays inside its budget.

Order of events, never wall-clock expectations: "answered before", "started no stage", read from the
server's own metrics (stage counters) and from the order in which calls return.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.bundle import open_bundle
from edge_runtime.memory_plan import plan_for_bundle
from edge_runtime.scheduler import SchedulerConfig
from edge_server_process import ServerProcess


def test_status_never_reports_more_than_the_budget(tiny_bundle: Path, tmp_path: Path) -> None:
    """A budget that holds 2 sequences of the bundle's 8-row batch: the service reports what it holds, and
    that is inside the budget (the state pool used to stage all 8 rows, counted twice)."""
    bundle = open_bundle(tiny_bundle, verify=False)
    context = bundle.limits["max_context"]
    probe = plan_for_bundle(bundle, 10**12, context, bundle.limits["max_batch"],
                            prefill_chunk=SchedulerConfig().max_step_tokens)
    budget = probe.total_bytes(2, context) + 4096
    with ServerProcess(tmp_path, tiny_bundle, "--budget", str(budget)) as server:
        server.wait_serving()
        with server.client() as c:
            status = c.status()
    memory = status.memory
    assert status.slots_busy + status.slots_free == 2
    assert memory.budget_bytes == budget
    assert memory.used_bytes <= memory.budget_bytes, (memory.used_bytes, memory.budget_bytes)
    # What it reports adds up: weights + overhead + working memory + the slots' state.
    slots_state = 2 * probe.sequence_bytes(context)
    assert memory.used_bytes == memory.weight_bytes + memory.overhead_bytes + memory.working_bytes + slots_state

"""The driver tells a lost Ray cluster from a slow round: its supervision failing for
``ray.cluster_lost_after_s`` ends the run with one line and exit 4 (not 1, kept for "every camera failed").

The driver here is not connected to any Ray (as after the head died): every supervision round fails in Ray
itself, no mock."""

from __future__ import annotations

import threading
import time

import pytest

ray = pytest.importorskip("ray")

from pipeline.config.schema import parse_config  # noqa: E402
from pipeline.core.exit_status import EXIT_ALL_CAMERAS_FAILED, EXIT_CLUSTER_LOST, EXIT_STARTUP  # noqa: E402
from pipeline.scale.executor import RayExecutor, _ShardState  # noqa: E402
from pipeline.scale.placement import plan_shards  # noqa: E402


def test_supervision_failing_past_the_limit_counts_as_a_lost_cluster(tmp_path):
    assert not ray.is_initialized()
    cfg = parse_config(
        {
            "cameras": [{"id": "c0", "source": "rtsp://127.0.0.1:9/x"}],
            "detector": {"model": "none"},
            "executor": "ray",
            "ray": {"health_interval_s": 0.1, "cluster_lost_after_s": 1.0, "standby": True},
        },
        "test",
    )
    executor = RayExecutor(cfg, tmp_path)
    for plan in plan_shards(cfg):  # planned, waiting to be placed: each round tries, and Ray refuses
        executor.shards[plan.shard_id] = _ShardState(plan)

    t0 = time.monotonic()
    supervisor = threading.Thread(target=executor._supervise, daemon=True)
    supervisor.start()
    assert executor.wait(timeout=20) is False  # returns as soon as the cluster counts as lost
    took = time.monotonic() - t0
    supervisor.join(5)
    assert executor.lost is not None and executor.lost.startswith("Ray cluster lost: supervision failed")
    assert "\n" not in executor.lost  # one line
    assert 1.0 <= took < 10.0
    assert EXIT_CLUSTER_LOST not in (EXIT_ALL_CAMERAS_FAILED, EXIT_STARTUP)

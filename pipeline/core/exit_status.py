"""The process exit statuses of ``run_pipeline.py`` (docs/running.md lists them with their meaning).

One home, below every layer that ends a run (cli, scale)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ALL_CAMERAS_FAILED = 1  # every camera failed (only that: never a start-up or cluster problem)
EXIT_STARTUP = 2  # could not start: config, Redis, a port, Ray unreachable, cameras that cannot be placed
EXIT_STOP_DEADLINE = 3  # the orderly stop did not finish within stop_timeout_s; the watchdog ended the run
EXIT_CLUSTER_LOST = 4  # executor ray: the Ray cluster (head/GCS) was lost during the run
EXIT_FORCED = 130  # a second signal

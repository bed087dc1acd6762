"""Cameras sharded over a Ray cluster (``executor: ray``).

A *shard* is the ordinary :class:`pipeline.run.runner.Pipeline` (decode → detect → analytics → publish) over a
subset of the cameras, with its own var dir and spool, running inside one Ray actor process. The driver
(:mod:`pipeline.scale.executor`) plans shards from the config, places them on nodes, watches their health and
re-places the shards of a dead actor or node on surviving capacity. Ray is imported lazily: the ``local``
executor never needs it.
"""

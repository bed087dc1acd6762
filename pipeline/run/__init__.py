"""The assembled pipeline: ``runner.Pipeline`` wires ingest -> detect -> analyze -> deliver for one process,
and the periodic status line. Entry points (``cli``), the web app and Ray shards drive it.
"""

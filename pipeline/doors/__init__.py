"""The reference door controller, a program of its own (``python -m pipeline.doors.controller``): it runs
beside the relay, verifies signed decisions from Redis and acts once. The pipeline's door rules are in
``pipeline.analyze.doors``.
"""

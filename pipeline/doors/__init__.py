"""The programs that run at the door, each its own process: the reference door controller
(``python -m pipeline.doors.controller``: verifies signed decisions from Redis and acts once) and the badge/PIN
reader's signer (``python -m pipeline.doors.reader``). The pipeline's door rules are in ``pipeline.analyze.doors``.
"""

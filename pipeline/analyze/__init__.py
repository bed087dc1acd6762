"""Per-camera analytics in frame order: faces (identity, liveness), door decisions with their signed audit
trail, and tracking with zones and lines. Output is events, handed to ``pipeline.deliver``.
"""

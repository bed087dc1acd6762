"""The shared vocabulary of every stage: frames and results (``types``), events, stage and camera states,
bounded queues, the supervised stage thread, metrics, box geometry and NMS, and what a source URL means.

The bottom layer: it imports nothing else of vidpipe's, so anything may import it. See docs/architecture.md.
"""

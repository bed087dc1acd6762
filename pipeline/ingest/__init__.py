"""Frames in: PyAV decoders with timeouts and reconnects, the stream clock that stamps capture time, and the
demo clip the quick start plays. Data flows on to ``pipeline.detect``.
"""

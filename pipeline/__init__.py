"""vidpipe: a real-time video analytics pipeline (decode → detect → track → identify → publish)."""

__version__ = "0.1.0"

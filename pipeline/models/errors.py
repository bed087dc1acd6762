"""The model-reading error, in a module of its own so that detectors can raise it without importing torch
(pipeline/models/darknet.py builds PyTorch modules; importing it costs seconds of start-up)."""

from __future__ import annotations


class ModelError(ValueError):
    """A model file could not be understood; the message names the file and where in it."""

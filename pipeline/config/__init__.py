"""The YAML schema, one module per section (``schema`` holds the root and the camera/detector/Redis keys),
and where runtime files go (``var_dir``, ``paths``).

Below every stage package so that each can read its own section; it imports only ``pipeline.core``.
"""

"""The operator's web app: live view, events, faces, doors and cameras at run time (Starlette + uvicorn).

Import ``pipeline.serve.web.server`` to run it; this package's ``config`` module has no web dependencies so the
pipeline config can always be loaded.
"""

"""The bearer token of the faces gallery API.

The API itself is served by the web app under ``/api/persons`` (``pipeline/serve/web/routes_faces.py``): the
pipeline process serves it, and ``run_pipeline.py faces serve`` runs the same app without a pipeline.
A call carries ``Authorization: Bearer <token>`` (token from faces.api.token or the variable named by
faces.api.token_env) or a web login session.

    GET    /api/persons                      -> {"persons": [{"name", "templates", "model_ids"}]}
    POST   /api/persons  {"name": N, "photos": [{"filename": F, "data": base64}], "append": false}
                                             -> {"name", "enrolled": [F...], "rejected": [{"photo", "reason"}], "templates"}
    DELETE /api/persons/<name>               -> {"removed": name}
    PATCH  /api/persons/<name> {"name": NEW} -> {"renamed": name, "to": NEW}
"""

from __future__ import annotations

import os

from pipeline.config.faces import FacesConfig


def api_token(cfg: FacesConfig) -> str:
    if cfg.api.token is not None:
        token = cfg.api.token.get_secret_value()
    else:
        token = os.environ.get(cfg.api.token_env or "", "")
        if not token:
            raise ValueError(
                f"faces.api: set faces.api.token or the environment variable {cfg.api.token_env}"
            )
    if len(token) < 16:
        raise ValueError("faces.api: the token must be at least 16 characters")
    return token

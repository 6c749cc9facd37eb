"""``GET /api/payment/docs``: the OpenAPI document as a page a person can read.

Swagger UI renders ``/api/payment/openapi.json``.  Its script and style come
from the pinned ``flask-swagger-ui`` package and are served by this service,
so the page works with no internet; it asks no online validator either.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, send_from_directory

from shared.services.views import BASE
from web.declare import Reply, operation
from web.openapi import DOCUMENT_PATH

bp = Blueprint("docs", __name__, url_prefix=f"{BASE}/docs")

#: Swagger UI's files, as the package ships them.
ASSETS = Path(flask_swagger_ui.__file__).parent / "dist"
SCRIPT, STYLE = "swagger-ui-bundle.js", "swagger-ui.css"
#: A day: the files change only with the package's pinned version.
ASSET_MAX_AGE = 86400

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Payment service API</title>
<link rel="stylesheet" href="{bp.url_prefix}/{STYLE}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{bp.url_prefix}/{SCRIPT}"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "{DOCUMENT_PATH}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null
}});
</script>
</body>
</html>
"""

_OPEN = "No token needed."


@operation(
    bp,
    "",
    "GET",
    summary="This document, as a page",
    description=f"The OpenAPI document rendered by Swagger UI, for people. {_OPEN}",
    tag="Operations",
    replies=(Reply(200, "The page.", {"type": "string"}, media_type="text/html"),),
    auth=None,
)
def get_docs() -> Response:
    return Response(PAGE, mimetype="text/html")


@operation(
    bp,
    f"/{SCRIPT}",
    "GET",
    summary="The page's script",
    description=f"Swagger UI's script, served by the service. {_OPEN}",
    tag="Operations",
    replies=(Reply(200, "Swagger UI's script.", {"type": "string"}, media_type="text/javascript"),),
    auth=None,
)
def get_docs_script() -> Response:
    return send_from_directory(ASSETS, SCRIPT, mimetype="text/javascript", max_age=ASSET_MAX_AGE)


@operation(
    bp,
    f"/{STYLE}",
    "GET",
    summary="The page's style",
    description=f"Swagger UI's style sheet, served by the service. {_OPEN}",
    tag="Operations",
    replies=(Reply(200, "Swagger UI's style sheet.", {"type": "string"}, media_type="text/css"),),
    auth=None,
)
def get_docs_style() -> Response:
    return send_from_directory(ASSETS, STYLE, mimetype="text/css", max_age=ASSET_MAX_AGE)

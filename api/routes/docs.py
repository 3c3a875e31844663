"""The interactive API docs at ``/docs`` (Swagger UI), when ``BILLING_DOCS`` is on.

Swagger UI's bundle and style come from the ``fastapi-offline`` package, never a CDN; the page
and the script that starts it are ours (``api/docs/``), so the page's Content-Security-Policy
allows scripts and styles from this origin only, no 'unsafe-inline'.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from services.errors import NotFound

OWN = Path(__file__).resolve().parent.parent / "docs"
SWAGGER = Path(str(resources.files("fastapi_offline") / "static"))
# Only these files are served, never a path from the URL.
_FILES = {
    "swagger-ui-bundle.js": (SWAGGER, "text/javascript; charset=utf-8"),
    "swagger-ui.css": (SWAGGER, "text/css; charset=utf-8"),
    "favicon.png": (SWAGGER, "image/png"),
    "init.js": (OWN, "text/javascript; charset=utf-8"),
}

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def docs_page() -> FileResponse:
    """The Swagger UI page."""
    return FileResponse(OWN / "index.html", media_type="text/html; charset=utf-8")


@router.get("/docs/{name}")
def docs_asset(name: str) -> FileResponse:
    """One of the page's files."""
    found = _FILES.get(name)
    if found is None:
        raise NotFound("no such docs file", code="not_found")
    folder, media_type = found
    return FileResponse(folder / name, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=86400"})

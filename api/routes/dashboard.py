"""The admin dashboard: static pages at ``/admin`` (its data comes from the admin API).

The page is plain HTML, CSS and ES modules shipped in the package (``api/dashboard/``); it
signs in with ``/api/auth/login`` and calls the admin API with a bearer token kept in the
browser's session storage. Only a fixed list of files is served, never a path from the URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from api.deps import SettingsDep
from services.errors import NotFound

ASSETS = Path(__file__).resolve().parent.parent / "dashboard"
_MEDIA = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# The files that exist when the app starts are all that is served; never a path from a URL.
_FILES = {p.name: _MEDIA[p.suffix] for p in ASSETS.iterdir() if p.suffix in _MEDIA}
# Its Content-Security-Policy and the other security headers come from
# api.middleware.SecurityHeadersMiddleware (by path), like every other response's.
_HEADERS = {
    # Revalidate on each load, so a deploy is seen at once (the files are tiny).
    "Cache-Control": "no-cache",
}

router = APIRouter()


@router.get("/admin", include_in_schema=False)
def dashboard_root() -> RedirectResponse:
    """Relative asset URLs need the trailing slash."""
    return RedirectResponse("/admin/", status_code=308)


@router.get("/admin/", include_in_schema=False)
def dashboard_page() -> FileResponse:
    """The single page of the dashboard."""
    return FileResponse(ASSETS / "index.html", media_type="text/html; charset=utf-8",
                        headers=_HEADERS)


@router.get("/admin/config.json", include_in_schema=False)
def dashboard_config(settings: SettingsDep) -> JSONResponse:
    """What the page needs to know of the server: how often statistics are recomputed."""
    return JSONResponse({"stats_interval_s": settings.stats_interval_s},
                        headers={"Cache-Control": "no-store"})


@router.get("/admin/{name}", include_in_schema=False)
def dashboard_asset(name: str) -> FileResponse:
    """One of the dashboard's script or style files."""
    media_type = _FILES.get(name)
    if media_type is None:
        # Unknown names (and any attempt at a path) get the API's usual 404 shape.
        raise NotFound("no such dashboard file", code="not_found")
    return FileResponse(ASSETS / name, media_type=media_type, headers=_HEADERS)


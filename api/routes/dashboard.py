"""The admin dashboard: static pages at ``/admin`` (its data comes from the admin API).

The page is plain HTML, CSS and ES modules shipped in the package (``api/dashboard/``, with
what it shares with the customer portal in ``api/ui/``); it signs in with ``/api/auth/login``
and calls the admin API with a bearer token kept in the browser's session storage.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from api.assets import AssetDir
from api.deps import SettingsDep

ASSETS = AssetDir(Path(__file__).resolve().parent.parent / "dashboard")

router = APIRouter()


@router.get("/admin", include_in_schema=False)
def dashboard_root() -> RedirectResponse:
    """Relative asset URLs need the trailing slash."""
    return RedirectResponse("/admin/", status_code=308)


@router.get("/admin/", include_in_schema=False)
def dashboard_page() -> FileResponse:
    """The single page of the dashboard."""
    return ASSETS.response("index.html")


@router.get("/admin/config.json", include_in_schema=False)
def dashboard_config(settings: SettingsDep) -> JSONResponse:
    """What the page needs to know of the server: how often statistics are recomputed."""
    return JSONResponse({"stats_interval_s": settings.stats_interval_s},
                        headers={"Cache-Control": "no-store"})


@router.get("/admin/{name}", include_in_schema=False)
def dashboard_asset(name: str) -> FileResponse:
    """One of the dashboard's script or style files."""
    return ASSETS.response(name)


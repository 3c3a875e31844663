"""The customer portal at ``/account``, the pages links and redirects open, and shared files.

Built like the admin dashboard: plain HTML, CSS and ES modules shipped in the package
(``api/portal/``), with what both share in ``api/ui/`` (served at ``/ui/``). The pages that
mails and Stripe's redirects point to (``/auth/confirm``, ``/auth/magic-link``,
``/auth/undo-email-change``, ``/auth/google``, ``/billing/success``, ``/billing/cancel``)
are one small page (``link.html``) whose script does the job its path names.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from api.assets import AssetDir
from api.deps import SettingsDep

_HERE = Path(__file__).resolve().parent.parent
PORTAL = AssetDir(_HERE / "portal")
UI = AssetDir(_HERE / "ui")
LINK_PAGES = (
    "/auth/confirm",
    "/auth/magic-link",
    "/auth/undo-email-change",
    "/auth/google",
    "/billing/success",
    "/billing/cancel",
)

router = APIRouter(include_in_schema=False)


@router.get("/ui/{name:path}")
def shared_asset(name: str) -> FileResponse:
    """A script or style file shared by the dashboard, the portal and the link pages."""
    return UI.response(name)


@router.get("/account")
def portal_root() -> RedirectResponse:
    """Relative asset URLs need the trailing slash."""
    return RedirectResponse("/account/", status_code=308)


@router.get("/account/")
def portal_page() -> FileResponse:
    """The single page of the portal."""
    return PORTAL.response("index.html")


@router.get("/account/config.json")
def portal_config(settings: SettingsDep) -> JSONResponse:
    """How purchases are paid here: Stripe Checkout, or test cards on the local Stripe peer."""
    payments = "test_cards" if settings.stripe_local_peer else "checkout"
    return JSONResponse({"payments": payments}, headers={"Cache-Control": "no-store"})


@router.get("/account/{name:path}")
def portal_asset(name: str) -> FileResponse:
    """One of the portal's script or style files (panels live in ``panels/``)."""
    return PORTAL.response(name)


def link_page() -> FileResponse:
    """A page that a mail's link or Stripe's redirect opens."""
    return PORTAL.response("link.html")


for _path in LINK_PAGES:
    router.add_api_route(_path, link_page, methods=["GET"])

"""Files of the pages the API serves (dashboard, portal, shared UI), from the package.

Only the files a folder holds when the app starts are served, each by its path relative to
the folder: a name from a URL is looked up in that list, never joined onto a path. Their
Content-Security-Policy and other security headers come from
``api.middleware.SecurityHeadersMiddleware`` (by path), like every other response's.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse

from services.errors import NotFound

_MEDIA = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}
# Revalidate on each load, so a deploy is seen at once (the files are small).
HEADERS = {"Cache-Control": "no-cache"}


class AssetDir:
    """The servable files under one folder of the package."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = {
            path.relative_to(root).as_posix(): _MEDIA[path.suffix]
            for path in sorted(root.rglob("*"))
            if path.is_file() and path.suffix in _MEDIA
        }

    def response(self, name: str) -> FileResponse:
        """The file ``name`` (a path relative to the folder); the API's 404 when there is none."""
        media_type = self.files.get(name)
        if media_type is None:
            # Unknown names (and any attempt at another path) get the API's usual 404 shape.
            raise NotFound("no such file", code="not_found")
        return FileResponse(self.root / name, media_type=media_type, headers=HEADERS)

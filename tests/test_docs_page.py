"""/docs and /openapi.json: off unless wanted, and Swagger UI under a strict policy.

Issue 13, finding 7: the schema and the docs page are public only with ``BILLING_DOCS`` (on by
default in development only); the page's files come from the package, and Chromium renders
it under a Content-Security-Policy without 'unsafe-inline', with no violation and no request
leaving the origin.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect

from api.app import create_app
from api.middleware import DOCS_CSP
from tests.browser import open_page
from tests.conftest import ARTIFACTS
from tests.support import served


@pytest.mark.parametrize(("environment", "docs", "served"), [
    ("production", None, False), ("test", None, False), ("development", None, True),
    ("production", True, True), ("development", False, False),
])
def test_docs_and_schema_are_served_only_where_wanted(settings, environment, docs, served):
    app = create_app(settings.model_copy(update={"environment": environment, "docs": docs}))
    with TestClient(app, raise_server_exceptions=False) as client:
        statuses = {path: client.get(path).status_code
                    for path in ("/docs", "/openapi.json", "/docs/swagger-ui-bundle.js")}
        assert client.get("/redoc").status_code == 404  # its script would come from a CDN
    assert statuses == dict.fromkeys(statuses, 200 if served else 404)


@pytest.fixture(scope="module")
def docs_api(settings) -> Iterator[str]:
    with served(create_app(settings.model_copy(update={"docs": True}))) as base:
        yield base


def test_swagger_ui_renders_from_this_origin_without_unsafe_inline(browser, docs_api):  # noqa: F811
    page, problems = open_page(browser)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    response = page.goto(f"{docs_api}/docs")

    assert response is not None and response.headers["content-security-policy"] == DOCS_CSP
    assert "unsafe-inline" not in DOCS_CSP
    expect(page.locator(".opblock").first).to_be_visible()
    expect(page.get_by_text("/api/user-management/credits/use").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "docs.png"))
    assert problems.errors == []  # a CSP violation is a console error
    assert requested and all(url.startswith(docs_api) for url in requested), requested

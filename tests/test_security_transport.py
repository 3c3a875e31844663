"""Headers and transport: security headers everywhere, the CORS allow-list, trusted proxies."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from api.client import client_ip
from api.middleware import API_CSP, DOCS_CSP, PAGES_CSP
from tests.conftest_auth import login_history
from tests.factories import auth_headers, make_user
from tests.support import wait_for

ALWAYS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def _assert_secured(response, csp: str = API_CSP) -> None:
    for name, value in ALWAYS.items():
        assert response.headers.get(name) == value, (name, response.request.url)
    assert response.headers["content-security-policy"] == csp


def test_every_kind_of_response_carries_the_security_headers(client, db, settings,
                                                              make_client):
    user = make_user(db)
    responses = [
        client.get("/healthz"),
        client.get("/api/user-management/credit-packages"),
        client.get("/api/user-management/profile", headers=auth_headers(user)),
        client.get("/api/user-management/profile"),  # 401
        client.get("/api/nope"),  # 404
        client.delete("/healthz"),  # 405
        client.post("/api/user-management/credits/use", headers=auth_headers(user),
                    content=b"x" * (settings.max_body_bytes + 1)),  # 413 from the middleware
        client.post("/api/auth/login", json={}),  # 422
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 401, 404, 405, 413, 422]
    for response in responses:
        _assert_secured(response)
        assert "strict-transport-security" not in response.headers  # http public URL
    _assert_secured(client.get("/admin/"), PAGES_CSP)
    _assert_secured(client.get("/admin/config.json"), PAGES_CSP)
    docs = make_client(docs=True)
    _assert_secured(docs.get("/docs"), DOCS_CSP)
    _assert_secured(docs.get("/docs/swagger-ui-bundle.js"), DOCS_CSP)
    _assert_secured(docs.get("/openapi.json"))


def test_authenticated_and_token_answers_are_never_cached(client, db):
    user = make_user(db)
    assert client.get("/api/user-management/credits",
                      headers=auth_headers(user)).headers["cache-control"] == "no-store"
    # A sign-in answer carries tokens without the request carrying any.
    refused = client.post("/api/auth/login", json={"email": "a@example.com", "password": "x"})
    assert refused.headers["cache-control"] == "no-store"
    # The dashboard's static files keep their own policy (revalidate, not no-store).
    assert client.get("/admin/").headers["cache-control"] == "no-cache"


def test_hsts_only_when_the_public_url_is_https(make_client):
    secure = make_client(public_base_url="https://billing.example.com")
    hsts = secure.get("/healthz").headers["strict-transport-security"]
    assert hsts.startswith("max-age=") and int(hsts.split("=")[1].split(";")[0]) >= 31_536_000


ALLOWED = "https://app.example.com"


def test_cors_allows_only_the_configured_origins(make_client, db):
    user = make_user(db)
    cors = make_client(cors_origins=[ALLOWED])
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type,idempotency-key"}

    ok = cors.options("/api/user-management/credits/use", headers={"Origin": ALLOWED, **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in ok.headers

    evil = cors.options("/api/user-management/credits/use",
                        headers={"Origin": "https://evil.example", **preflight})
    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers
    _assert_secured(evil)

    read = cors.get("/api/user-management/credits", headers={"Origin": ALLOWED,
                                                            **auth_headers(user)})
    assert read.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in read.headers["access-control-expose-headers"].lower()
    foreign = cors.get("/api/user-management/credits",
                       headers={"Origin": "https://evil.example", **auth_headers(user)})
    assert "access-control-allow-origin" not in foreign.headers


def test_no_cors_headers_without_configured_origins(client):
    response = client.get("/healthz", headers={"Origin": ALLOWED})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options("/api/user-management/credits/use",
                               headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize(
    ("entries", "peer", "forwarded", "expected"),
    [
        ([], "198.51.100.7", "203.0.113.1", "198.51.100.7"),  # no proxies: header ignored
        (["10.0.0.0/8"], "198.51.100.7", "203.0.113.1", "198.51.100.7"),  # untrusted peer
        (["10.0.0.0/8"], "10.1.2.3", "203.0.113.1", "203.0.113.1"),
        (["10.0.0.0/8"], "10.1.2.3", "1.1.1.1, 203.0.113.1, 10.9.9.9", "203.0.113.1"),  # spoof
        (["10.0.0.5", "10.0.0.6"], "10.0.0.5", "203.0.113.1, 10.0.0.6", "203.0.113.1"),
        (["10.0.0.0/8"], "10.1.2.3", "not-an-ip, 10.9.9.9", "10.9.9.9"),  # broken chain
        (["10.0.0.0/8"], "10.1.2.3", None, "10.1.2.3"),  # no header: the proxy itself
        (["10.0.0.0/8"], "10.1.2.3", "10.9.9.9", "10.9.9.9"),  # all ours: leftmost
        (["2001:db8::/32"], "2001:db8::1", "2001:db8:0:1::7, 2001:db8::2", "2001:db8:0:1::7"),
        (["2001:db8::/32"], "2001:db8::1", "2606:4700::1111", "2606:4700::1111"),
    ],
)
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(settings, entries, peer,
                                                               forwarded, expected):
    configured = settings.model_copy(update={"trusted_proxies": entries})

    class App:
        class state:  # noqa: N801 - the shape of app.state
            pass

    App.state.settings = configured
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                       "client": (peer, 40000), "app": App, "query_string": b""})
    assert client_ip(request) == expected


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "proxy.example.com", "10.0.0.0/8,nope"])
def test_bad_trusted_proxy_entries_fail_at_start(settings, bad):
    with pytest.raises(ValidationError, match="trusted_proxies"):
        type(settings).model_validate({**settings.model_dump(), "trusted_proxies": bad})


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/path"])
def test_bad_cors_origins_fail_at_start(settings, bad):
    with pytest.raises(ValidationError, match="cors_origins"):
        type(settings).model_validate({**settings.model_dump(), "cors_origins": bad})


def test_rate_limits_and_login_history_use_the_forwarded_client(make_client, db, celery_worker):
    proxied = make_client(client_ip="10.0.0.5", trusted_proxies=["10.0.0.0/8"],
                          rate_limit_login="2/minute")

    def login(client_addr: str, email: str):
        return proxied.post("/api/auth/login", headers={"X-Forwarded-For": client_addr},
                            json={"email": email, "password": "wrong-password-1"})

    # Two clients behind one proxy have a bucket each (the proxy is not one client).
    assert [login("203.0.113.1", f"a{i}@example.com").status_code for i in range(3)] == [
        401, 401, 429]
    assert login("203.0.113.2", "b@example.com").status_code == 401
    # Without a trusted proxy in between, the header is the client's word: ignored.
    direct = make_client(client_ip="198.51.100.9", trusted_proxies=["10.0.0.0/8"],
                         rate_limit_login="2/minute")
    codes = [direct.post("/api/auth/login", headers={"X-Forwarded-For": f"203.0.113.{50 + i}"},
                         json={"email": f"c{i}@example.com", "password": "wrong-password-1"}
                         ).status_code for i in range(3)]
    assert codes == [401, 401, 429]

    wait_for(lambda: login_history(db, identifier="b@example.com"), timeout=30,
             message="the proxied attempt in login_history")
    assert [str(r.ip) for r in login_history(db, identifier="b@example.com")] == ["203.0.113.2"]
    wait_for(lambda: login_history(db, identifier="c0@example.com"), timeout=30,
             message="the direct attempt in login_history")
    assert [str(r.ip) for r in login_history(db, identifier="c0@example.com")] == [
        "198.51.100.9"]

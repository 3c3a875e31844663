"""The API skeleton: error shape everywhere, probes, request ids, body limits."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api.app import create_app
from tests.support import free_port


class Echo(BaseModel):
    n: int


@pytest.fixture
def echo_client(settings):
    app = create_app(settings.model_copy(update={"max_body_bytes": 2048}))

    @app.post("/echo")
    def echo(body: Echo) -> Echo:
        return body

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret-internal-detail")

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_unknown_route_and_method_use_the_error_shape(client):
    _error(client.get("/api/nope"), 404, "not_found")
    _error(client.delete("/healthz"), 405, "method_not_allowed")


def test_validation_and_malformed_json(echo_client):
    err = _error(echo_client.post("/echo", json={"n": "x"}), 422, "validation_error")
    assert err["fields"][0]["field"] == "n"
    assert "x" not in str(err["fields"])  # inputs are never echoed
    _error(
        echo_client.post("/echo", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "malformed_json",
    )


def test_oversized_bodies_are_refused_with_413(echo_client):
    big = b'{"n": 1, "pad": "' + b"a" * 4096 + b'"}'
    _error(echo_client.post("/echo", content=big, headers={"content-type": "application/json"}),
           413, "payload_too_large")

    def chunks():
        for _ in range(10):
            yield b"a" * 1024

    _error(echo_client.post("/echo", content=chunks(), headers={"content-type": "application/json"}),
           413, "payload_too_large")


def test_unhandled_error_is_500_without_details(echo_client):
    response = echo_client.get("/boom")
    err = _error(response, 500, "internal_error")
    assert "secret-internal-detail" not in response.text
    assert err["message"] == "an unexpected error occurred"


def test_every_response_carries_a_request_id(client):
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    # An id that could forge log lines is replaced.
    assert client.get("/healthz", headers={"X-Request-ID": "a\tb"}).headers["x-request-id"] != "a\tb"


def test_openapi_docs_are_served_when_on(make_client):
    client = make_client(docs=True)
    assert client.get("/docs").status_code == 200
    assert "/readyz" in client.get("/openapi.json").json()["paths"]


def test_the_spend_documents_the_headers_it_reads_itself(make_client):
    """The spend reads its bearer token and Idempotency-Key off the request (no dependency
    to solve on every call); its schema still names both, as the other routes' do."""
    schema = make_client(docs=True).get("/openapi.json").json()
    spend = schema["paths"]["/api/user-management/credits/use"]["post"]
    purchase = schema["paths"]["/api/user-management/credits/purchase"]["post"]
    assert spend["security"] == purchase["security"] == [{"HTTPBearer": []}]
    assert [p for p in spend["parameters"] if p["name"] == "Idempotency-Key"] == [
        p for p in purchase["parameters"] if p["name"] == "Idempotency-Key"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_readyz_503_when_database_is_down(settings):
    dead = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing"
    with TestClient(create_app(settings.model_copy(update={"database_url": dead}))) as client:
        err = _error(client.get("/readyz"), 503, "not_ready")
    assert err["checks"] == {"database": "unavailable", "broker": "ok"}


def test_readyz_follows_redis_going_down_and_coming_back(settings, tmp_path):
    from cli.embedded import EmbeddedRedis

    port = free_port()
    server = EmbeddedRedis(tmp_path, persist=False, port=port)
    url = server.start()
    try:
        app = create_app(settings.model_copy(update={"redis_url": url}))
        with TestClient(app) as client:
            assert client.get("/readyz").status_code == 200
            server.stop()
            err = _error(client.get("/readyz"), 503, "not_ready")
            assert err["checks"]["broker"] == "unavailable"
            server.start()
            assert client.get("/readyz").status_code == 200
    finally:
        server.stop()

"""A small OpenID provider on loopback that signs real RS256 ID tokens.

It serves ``/authorize`` (redirects back with a code), ``/token`` (checks the
client secret, redirect URI and PKCE verifier, returns an ID token) and
``/jwks``. Tests set ``next_claims`` for the account that signs in and the
``tamper`` knobs for the attack cases (another signing key, wrong issuer or
audience, an expired token, another nonce, ``alg: none``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import free_port

CLIENT_ID = "test-google-client.apps.example.com"
CLIENT_SECRET = "test-google-client-secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OidcProvider:
    """The provider's state; ``start()`` serves it on a loopback port."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "test-key-1"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.codes: dict[str, dict[str, Any]] = {}
        self.next_claims: dict[str, Any] = {}
        self.tamper: dict[str, Any] = {}
        self.token_requests = 0
        self._server: ThreadingHTTPServer | None = None

    # --- what tests use -----------------------------------------------------------------

    def reset(self) -> None:
        """Forget codes and knobs (between tests)."""
        self.codes.clear()
        self.next_claims = {}
        self.tamper = {}
        self.token_requests = 0

    def jwks(self) -> dict[str, Any]:
        """The public key set (only ``self.key``; ``other_key`` is unknown to relying parties)."""
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def sign(self, claims: dict[str, Any], *, key: Any = None, kid: str | None = None,
             algorithm: str = "RS256") -> str:
        """A JWT over ``claims``, signed with our key (or ``key``) and our ``kid``."""
        headers = {"kid": kid or self.kid}
        if algorithm == "none":
            return jwt.encode(claims, None, algorithm="none", headers=headers)
        return jwt.encode(claims, key or self.key, algorithm=algorithm, headers=headers)

    def id_token(self, *, nonce: str, audience: str) -> str:
        """The ID token for ``next_claims``, with whatever the tamper knobs change."""
        now = int(time.time())
        claims = {
            "iss": self.tamper.get("iss", self.url),
            "aud": self.tamper.get("aud", audience),
            "sub": "google-sub-1",
            "email": "ada@example.com",
            "email_verified": True,
            "name": "Ada Lovelace",
            "iat": now,
            "exp": now + self.tamper.get("exp_in", 300),
            "nonce": self.tamper.get("nonce", nonce),
            **self.next_claims,
        }
        algorithm = self.tamper.get("alg", "RS256")
        if algorithm == "HS256":
            # Algorithm confusion: a relying party must accept only RS256 from this issuer.
            return self.sign(claims, key=b"hs256-key-an-attacker-chose-32b!", algorithm="HS256")
        key = self.other_key if self.tamper.get("other_key") else None
        return self.sign(claims, key=key, algorithm=algorithm)

    # --- serving ------------------------------------------------------------------------

    def start(self) -> OidcProvider:
        """Serve on loopback in a daemon thread."""
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                if parts.path == "/jwks":
                    self._json(200, provider.jwks())
                elif parts.path == "/authorize":
                    provider._authorize(self, {k: v[0] for k, v in parse_qs(parts.query).items()})
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if urlsplit(self.path).path == "/token":
                    status, body = provider._token(form)
                    self._json(status, body)
                else:
                    self._json(404, {"error": "not_found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _authorize(self, handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        required = ("response_type", "client_id", "redirect_uri", "state", "nonce",
                    "code_challenge", "code_challenge_method")
        if any(k not in query for k in required) or query["client_id"] != CLIENT_ID \
                or query["code_challenge_method"] != "S256" or query["response_type"] != "code":
            handler.send_response(400)
            handler.end_headers()
            return
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "nonce": query["nonce"],
            "challenge": query["code_challenge"],
            "redirect_uri": query["redirect_uri"],
        }
        target = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
        handler.send_response(302)
        handler.send_header("Location", target)
        handler.end_headers()

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests += 1
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return 401, {"error": "invalid_client"}
        grant = self.codes.pop(form.get("code", ""), None)  # codes are single-use
        if grant is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri"}
        verifier = form.get("code_verifier", "")
        if _b64(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verifier"}
        return 200, {
            "access_token": secrets.token_urlsafe(16),
            "token_type": "Bearer",
            "expires_in": 3600,
            "id_token": self.id_token(nonce=grant["nonce"], audience=CLIENT_ID),
        }

"""Mail and SMS senders: file senders, and Twilio's REST API against a loopback stand-in."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from services.errors import UpstreamUnavailable
from services.mail import FileMailSender, Mail
from services.sms import FileSmsSender, Sms, SmsRejected, TwilioSmsSender
from tests.support import free_port


class _Twilio:
    """Answers POST /2010-04-01/Accounts/{sid}/Messages.json like Twilio, with a set status."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 201
        self.port = free_port()
        twilio = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers["Content-Length"])
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                twilio.requests.append({"path": self.path, "auth": self.headers["Authorization"],
                                        "form": form})
                body = json.dumps({"sid": "SM1"} if twilio.status < 400 else
                                  {"code": 21211, "message": "Invalid 'To' Phone Number"})
                self.send_response(twilio.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def twilio():
    stand_in = _Twilio()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


def _sender(twilio: _Twilio) -> TwilioSmsSender:
    return TwilioSmsSender(account_sid="AC123", auth_token="tw-token", from_number="+15005550006",
                           api_base=f"http://127.0.0.1:{twilio.port}")


def test_twilio_sender_posts_the_message_with_basic_auth(twilio):
    _sender(twilio).send(Sms(to="+14155550123", body="Your sign-in code is 123456."))
    (request,) = twilio.requests
    assert request["path"] == "/2010-04-01/Accounts/AC123/Messages.json"
    assert request["auth"].startswith("Basic ")
    assert request["form"] == {"From": "+15005550006", "To": "+14155550123",
                               "Body": "Your sign-in code is 123456."}


def test_twilio_server_errors_are_transient_and_refusals_final(twilio):
    twilio.status = 503
    with pytest.raises(UpstreamUnavailable):
        _sender(twilio).send(Sms(to="+14155550123", body="x"))
    twilio.status = 400
    with pytest.raises(SmsRejected, match="Invalid 'To' Phone Number"):
        _sender(twilio).send(Sms(to="+14155550123", body="x"))


def test_unreachable_twilio_is_transient():
    sender = TwilioSmsSender(account_sid="AC1", auth_token="t", from_number="+15005550006",
                             api_base=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamUnavailable):
        sender.send(Sms(to="+14155550123", body="x"))


def test_file_senders_write_one_private_file_per_message(tmp_path):
    FileMailSender(sender="billing@example.com", directory=tmp_path / "mail").send(
        Mail(to="a@example.com", subject="Hi", body="Hello"))
    FileSmsSender(directory=tmp_path / "sms").send(Sms(to="+14155550123", body="Code 1"))
    (eml,) = (tmp_path / "mail").iterdir()
    assert b"Subject: Hi" in eml.read_bytes() and eml.stat().st_mode & 0o077 == 0
    (sms,) = (tmp_path / "sms").iterdir()
    assert json.loads(sms.read_text()) == {"to": "+14155550123", "body": "Code 1"}


def test_twilio_backend_without_credentials_fails_at_start_naming_the_settings():
    from settings import Settings

    with pytest.raises(ValueError, match="BILLING_TWILIO_ACCOUNT_SID"):
        Settings(sms_backend="twilio")

"""Free-text account fields (names, bio, avatar URL): what a person types, and what a provider says.

Typed values that are not text are refused (400 ``invalid_<field>``); a value from an outside
identity provider is cleaned instead, so a stray character in a Google display name never
blocks a sign-in. Control characters (CR/LF would split a mail or HTTP header the value lands
in, NUL is refused by PostgreSQL) and lone surrogates (not encodable as UTF-8) are not text.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

from services.errors import InvalidInput

NAME_LIMIT = 200
TEXT_LIMIT = 2000
URL_LIMIT = 2048


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cs")


def no_controls(value: str, *, field: str, allow: str = "") -> str:
    """``value`` unchanged; InvalidInput if it holds a control character not in ``allow``."""
    if any(char not in allow and _is_control(char) for char in value):
        raise InvalidInput(f"{field} contains a control character", code=f"invalid_{field}")
    return value


def text(value: str, *, field: str, limit: int) -> str | None:
    """A typed text field, stripped; None when blank. Only ``bio`` may span lines."""
    value = no_controls(value, field=field, allow="\r\n\t" if field == "bio" else "").strip()
    if len(value) > limit:
        raise InvalidInput(f"{field} must be at most {limit} characters", code=f"invalid_{field}")
    return value or None


def avatar_url(value: str) -> str:
    """A typed avatar URL: http(s), with a host, at most ``URL_LIMIT`` characters."""
    no_controls(value, field="avatar_url")
    try:
        parts = urlsplit(value.strip())
    except ValueError:  # e.g. an unbalanced '[' of an IPv6 host
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc \
            or len(value) > URL_LIMIT:
        raise InvalidInput(f"avatar_url must be an http(s) URL of at most {URL_LIMIT} characters",
                           code="invalid_avatar_url")
    return value.strip()


def from_provider(value: str | None, *, limit: int = NAME_LIMIT) -> str | None:
    """A provider's name: control characters dropped, cut to ``limit``; None when blank."""
    if not value:
        return None
    cleaned = "".join(char for char in value if not _is_control(char)).strip()
    return cleaned[:limit] or None


def url_from_provider(value: str | None) -> str | None:
    """A provider's picture URL if it is a valid avatar URL, else None."""
    if not value:
        return None
    try:
        return avatar_url(value)
    except InvalidInput:
        return None

"""Password hashing (argon2id) and the password policy."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.errors import InvalidInput

# argon2-cffi's defaults are argon2id with RFC 9106's low-memory profile.
_hasher = PasswordHasher()
# Hashing cost grows with the input; nobody types more than this.
MAX_LENGTH = 256
# Verified against when there is no account, so a miss costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("no account has this password, it only costs time")


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The shipped list of the most common passwords (lower case)."""
    text = resources.files("services.auth").joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


def check_policy(password: str, *, min_length: int, email: str | None = None) -> None:
    """Refuse a password that is too short, too long, too common or the email itself."""
    if len(password) < min_length:
        raise InvalidInput(
            f"password must be at least {min_length} characters", code="password_too_short"
        )
    if len(password) > MAX_LENGTH:
        raise InvalidInput(
            f"password must be at most {MAX_LENGTH} characters", code="password_too_long"
        )
    lowered = password.lower()
    if lowered in common_passwords():
        raise InvalidInput(
            "password is one of the most common passwords; choose another",
            code="password_too_common",
        )
    if email and lowered in {email.lower(), email.split("@", 1)[0].lower()}:
        raise InvalidInput("password must not be your email address", code="password_like_email")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (salt and parameters included)."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if ``password`` matches; spends the same time when there is no hash."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's."""
    return _hasher.check_needs_rehash(password_hash)

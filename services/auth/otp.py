"""Six-digit codes sent by SMS (hashed, short-lived, a few attempts): to sign in, and to
prove a number a signed-in user wants on their account (a code with a ``user_id``)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import timedelta

import phonenumbers
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db import rls
from db.base import utc_now
from db.models import OtpCode, User
from db.transaction import transaction
from services.auth import outgoing, ratelimit
from services.auth.accounts import check_can_sign_in, flush_unique
from services.auth.context import AuthContext
from services.auth.refresh import TokenPair, sign_in
from services.errors import Conflict, DomainError, InvalidInput, Unauthorized
from settings import Settings

METHOD = "otp"


def normalize_phone(raw: str) -> str:
    """The number in E.164 (``+14155550123``); ``InvalidInput`` unless it is a valid number."""
    message = "phone must be a valid number in international form, e.g. +14155550123"
    if len(raw) > 32:
        raise InvalidInput(message, code="invalid_phone")
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        raise InvalidInput(message, code="invalid_phone") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidInput(message, code="invalid_phone")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _code_hash(settings: Settings, phone: str, code: str) -> bytes:
    # Keyed: a plain hash of one of a million codes is reversed in a millisecond.
    key = settings.jwt_signing_key().encode()
    return hmac.new(key, f"otp:{phone}:{code}".encode(), hashlib.sha256).digest()


def request_code(session: Session, ctx: AuthContext, *, phone: str) -> None:
    """Text a new code to ``phone``; any earlier unused code of the number stops working."""
    phone = normalize_phone(phone)
    ratelimit.hit(ctx, "otp", account=phone, bucket="send")
    now = utc_now()
    # One live code per number, so guesses cannot be spread over several codes.
    session.execute(
        update(OtpCode)
        .where(OtpCode.phone == phone, OtpCode.user_id.is_(None), OtpCode.used_at.is_(None))
        .values(used_at=now)
    )
    _text_code(session, ctx, phone=phone, user_id=None,
               text="Your sign-in code is {code}. It expires in {minutes} minutes.")


def _text_code(
    session: Session, ctx: AuthContext, *, phone: str, user_id: uuid.UUID | None, text: str
) -> None:
    code = f"{secrets.randbelow(1_000_000):06d}"
    ttl = ctx.settings.otp_ttl_s
    session.add(OtpCode(phone=phone, user_id=user_id,
                        code_hash=_code_hash(ctx.settings, phone, code),
                        expires_at=utc_now() + timedelta(seconds=ttl)))
    session.flush()
    body = text.format(code=code, minutes=max(1, ttl // 60))
    outgoing.queue_sms(session, ctx.redis, ctx.settings, to=phone, body=body, ttl_s=ttl)


def _spend_attempt(
    session: Session, ctx: AuthContext, code_id: object, max_attempts: int
) -> int | None:
    # Counted before the code is compared, in a transaction of its own (as the request's
    # role and context), so neither a refusal's rollback nor concurrent guesses get more
    # than ``max_attempts`` tries.
    assert ctx.settings.database_url is not None
    with transaction(ctx.settings.database_url, acting_as=rls.context_of(session)) as own:
        return own.execute(
            update(OtpCode)
            .where(OtpCode.id == code_id, OtpCode.used_at.is_(None),
                   OtpCode.attempts < max_attempts)
            .values(attempts=OtpCode.attempts + 1)
            .returning(OtpCode.attempts)
        ).scalar()


def _check_code(
    session: Session, ctx: AuthContext, row: OtpCode | None, code: str,
    error: type[DomainError],
) -> tuple[DomainError, str] | None:
    """Spend one attempt of ``row`` on ``code`` and use the code up if it is right; else the
    refusal and the reason to record."""
    wrong = error("the code is wrong or expired; request a new one", code="invalid_code")
    if row is None:
        return wrong, "no_code"
    if row.expires_at <= utc_now():
        return error("the code has expired; request a new one", code="code_expired"), \
            "code_expired"
    max_attempts = ctx.settings.otp_max_attempts
    attempts = _spend_attempt(session, ctx, row.id, max_attempts)
    if attempts is None:
        return error("too many wrong codes; request a new one", code="too_many_attempts"), \
            "too_many_attempts"
    if not hmac.compare_digest(row.code_hash, _code_hash(ctx.settings, row.phone, code)):
        return error("the code is wrong", code="invalid_code",
                     attempts_left=max_attempts - attempts), "wrong_code"
    used = session.execute(
        update(OtpCode).where(OtpCode.id == row.id, OtpCode.used_at.is_(None))
        .values(used_at=utc_now()).returning(OtpCode.id)
    ).first()
    return (wrong, "code_used") if used is None else None


def verify(session: Session, ctx: AuthContext, *, phone: str, code: str) -> TokenPair:
    """Check the code; sign in the account with this phone, creating it on first sight."""
    phone = normalize_phone(phone)

    def refuse(error: DomainError, reason: str | None = None) -> DomainError:
        ctx.record(method=METHOD, success=False, reason=reason or error.code, identifier=phone)
        return error

    try:
        ratelimit.hit(ctx, "otp", account=phone, bucket="verify")
    except DomainError as exc:
        raise refuse(exc) from None
    row = session.scalar(
        select(OtpCode)
        .where(OtpCode.phone == phone, OtpCode.user_id.is_(None), OtpCode.used_at.is_(None))
        .order_by(OtpCode.created_at.desc())
        .limit(1)
    )
    refused = _check_code(session, ctx, row, code, error=Unauthorized)
    if refused is not None:
        raise refuse(*refused)
    user = session.scalar(select(User).where(User.phone == phone).with_for_update())
    if user is not None and user.phone_confirmed_at is None:
        # Typed into a profile, never proven there: the number belongs to whoever just
        # proved it, who must not land in that account. It leaves the account that claimed it.
        user.phone = None
        session.flush()
        user = None
    if user is None:
        user = User(phone=phone)
        session.add(user)
        flush_unique(session, "phone")
    check_can_sign_in(ctx, user, method=METHOD, identifier=phone)
    if user.phone_confirmed_at is None:
        user.phone_confirmed_at = utc_now()
    ctx.record(method=METHOD, success=True, user_id=user.id, identifier=phone)
    return sign_in(session, ctx.settings, user)


def request_change(session: Session, ctx: AuthContext, user: User, *, phone: str) -> None:
    """Text a code to a number ``user`` wants on their account (theirs once it comes back).

    The same whether or not another account has the number: whoever holds the phone gets
    the code, and only they can tell.
    """
    ratelimit.hit(ctx, "phone_change", account=str(user.id))
    phone = normalize_phone(phone)
    ratelimit.hit(ctx, "phone_change", account=phone, bucket="to")
    drop_pending_change(session, user_id=user.id)
    if phone == user.phone and user.phone_confirmed_at is not None:
        return
    _text_code(session, ctx, phone=phone, user_id=user.id,
               text="Your code to add this number to your account is {code}. It expires in "
                    "{minutes} minutes. If you did not ask for it, ignore this text.")


def drop_pending_change(session: Session, *, user_id: uuid.UUID) -> None:
    """Void the codes of a number the user asked to add (a newer request replaces them)."""
    session.execute(
        update(OtpCode)
        .where(OtpCode.user_id == user_id, OtpCode.used_at.is_(None))
        .values(used_at=utc_now())
    )


def pending_change(session: Session, user: User) -> str | None:
    """The number waiting for its code, if any."""
    return session.scalar(
        select(OtpCode.phone)
        .where(OtpCode.user_id == user.id, OtpCode.used_at.is_(None),
               OtpCode.expires_at > utc_now())
        .order_by(OtpCode.created_at.desc())
        .limit(1)
    )


def confirm_change(session: Session, ctx: AuthContext, user: User, *, code: str) -> None:
    """Put the number whose code this is on ``user``'s account, proven."""
    ratelimit.hit(ctx, "phone_change", account=str(user.id), bucket="verify")
    row = session.scalar(
        select(OtpCode)
        .where(OtpCode.user_id == user.id, OtpCode.used_at.is_(None))
        .order_by(OtpCode.created_at.desc())
        .limit(1)
    )
    refused = _check_code(session, ctx, row, code, error=InvalidInput)
    if refused is not None:
        raise refused[0]
    assert row is not None
    with rls.scope(session, "service"):
        holder = session.scalar(select(User).where(User.phone == row.phone,
                                                   User.id != user.id).with_for_update())
        if holder is not None:
            if holder.phone_confirmed_at is not None:
                # Told only to whoever just proved they hold the phone.
                raise Conflict("this phone number signs in to another account",
                               code="phone_taken")
            holder.phone = None  # typed there, never proven: it goes to who proved it
            session.flush()
    user.phone = row.phone
    user.phone_confirmed_at = utc_now()
    flush_unique(session, "phone")

"""Accounts: sign-up, email confirmation, password sign-in, roles, identities."""

from __future__ import annotations

import unicodedata
import uuid

from confusable_homoglyphs import confusables
from email_validator import EmailNotValidError, validate_email
from psycopg.errors import UniqueViolation
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import AuthIdentity, User
from services.auth import fields, onetime, outgoing, passwords, ratelimit
from services.auth.context import AuthContext
from services.auth.refresh import TokenPair, sign_in, sign_out_everywhere
from services.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound, Unauthorized
from settings import Settings

MAX_EMAIL_LENGTH = 320


def normalize_email(raw: str) -> str:
    """The address in NFKC, validated (syntax only) and lower-cased; ``InvalidInput`` otherwise.

    NFKC first, so full-width or other compatibility forms of letters are the letters
    themselves (``ａｄａ@…`` is ``ada@…``); then a local part or domain label that mixes
    scripts (a Cyrillic 'е' among Latin letters, punycode included) is refused: it can only
    be there to look like another address.
    """
    if len(raw) > MAX_EMAIL_LENGTH:
        raise InvalidInput("email is too long", code="invalid_email")
    try:
        checked = validate_email(unicodedata.normalize("NFKC", raw.strip()),
                                 check_deliverability=False)
    except EmailNotValidError:
        # Its message quotes the address's characters: none of the client's input goes back.
        raise InvalidInput("email is not a valid address", code="invalid_email") from None
    if any(confusables.is_mixed_script(part)
           for part in (checked.local_part, *checked.domain.split("."))):
        raise InvalidInput("email mixes letters of different alphabets in one part",
                           code="invalid_email")
    return checked.normalized.lower()


def by_email(session: Session, email: str) -> User | None:
    """The account with this (normalized) email, if any."""
    return session.scalar(select(User).where(User.email == email))


def link(settings: Settings, page: str, token: str) -> str:
    """A link to a frontend page that carries ``token`` in its query string."""
    base = str(settings.link_base_url or settings.public_base_url).rstrip("/")
    return f"{base}/{page}?token={token}"


def mail_token(
    session: Session, ctx: AuthContext, *, user: User, purpose: str, email: str,
    session_id: uuid.UUID | None = None,
) -> None:
    """Create a one-time token for ``purpose`` and have a worker mail its link to ``email``."""
    settings = ctx.settings
    ttl = settings.magic_link_ttl_s if purpose == "magic_link" else settings.email_token_ttl_s
    token = onetime.create(session, purpose=purpose, email=email, ttl_s=ttl, user_id=user.id,
                           session_id=session_id)
    minutes = max(1, ttl // 60)
    subject, page, text = {
        "email_confirmation": (
            "Confirm your email address", "auth/confirm",
            "Welcome! Open this link to confirm your email address:",
        ),
        "email_change": (
            "Confirm your new email address", "auth/confirm",
            "Open this link to make this your account's email address:",
        ),
        "magic_link": (
            "Your sign-in link", "auth/magic-link",
            "Open this link to sign in (it works once):",
        ),
    }[purpose]
    body = (
        f"{text}\n\n{link(settings, page, token)}\n\n"
        f"The link expires in {minutes} minutes. If you did not ask for it, ignore this mail.\n"
    )
    outgoing.queue_mail(
        session, ctx.redis, settings, to=email, subject=subject, body=body, ttl_s=ttl
    )


def mark_email_confirmed(
    session: Session, ctx: AuthContext, user: User, *, keeps_password: bool = False,
    identity: tuple[str, str] | None = None,
) -> None:
    """Record that the user proved they own their email; the first proof applies ADMIN_EMAILS.

    Whoever set the account up before anyone proved its address (a stranger who registered
    the owner's email while confirmation was off, or through a provider that does not vouch
    for it) is evicted by that first proof, unless it is the sign-up's own confirmation link
    (``keeps_password``: the one who chose the password reads the mailbox): the password goes,
    every sign-in ends, pending email changes are void, and outside identities other than the
    proving one (``identity``: provider, subject) are unlinked.
    """
    if user.email_confirmed_at is not None:
        return
    if not keeps_password:
        evict(session, ctx, user, keep_identity=identity)
    user.email_confirmed_at = utc_now()
    # Only here, at the first proof of an address the account was set up with: an address
    # moved in by an email change never makes its account an admin (run `billing admin
    # promote` for that), or a phished click on a change link would.
    if user.email and user.email in ctx.settings.admin_emails:
        user.role = "admin"


def evict(
    session: Session, ctx: AuthContext, user: User, *,
    keep_identity: tuple[str, str] | None = None,
) -> None:
    """Take the account from whoever held it: no password, no sign-in, no pending email
    change, no outside identity (but ``keep_identity``: provider, subject)."""
    user.password_hash = None
    sign_out_everywhere(session, redis_client=ctx.redis, settings=ctx.settings, user_id=user.id)
    onetime.void(session, user_id=user.id, purpose="email_change")
    others = delete(AuthIdentity).where(AuthIdentity.user_id == user.id)
    if keep_identity is not None:
        provider, subject = keep_identity
        others = others.where(~((AuthIdentity.provider == provider)
                                & (AuthIdentity.subject == subject)))
    session.execute(others.execution_options(synchronize_session=False))


def flush_unique(session: Session, what: str) -> None:
    """Flush, turning a unique-index race into ``Conflict`` naming ``what``."""
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        if not isinstance(exc.orig, UniqueViolation):
            raise
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None) or ""
        field = next((f for f in ("email", "phone", "username") if f in constraint), what)
        raise Conflict(f"this {field} is already in use", code=f"{field}_taken") from None


def register(
    session: Session, ctx: AuthContext, *, email: str, password: str, full_name: str | None = None
) -> User:
    """Create a password account and mail its confirmation link."""
    email = normalize_email(email)
    ratelimit.hit(ctx, "register", account=email)
    passwords.check_policy(password, min_length=ctx.settings.password_min_length, email=email)
    if by_email(session, email) is not None:
        raise Conflict("an account with this email already exists", code="email_taken")
    name = fields.text(full_name, field="full_name", limit=fields.NAME_LIMIT) if full_name else None
    user = User(email=email, password_hash=passwords.hash_password(password), full_name=name)
    session.add(user)
    flush_unique(session, "email")
    mail_token(session, ctx, user=user, purpose="email_confirmation", email=email)
    return user


def _refused(ctx: AuthContext, method: str, identifier: str | None, error: DomainError,
             user_id: uuid.UUID | None = None, reason: str | None = None) -> DomainError:
    ctx.record(method=method, success=False, reason=reason or error.code, user_id=user_id,
               identifier=identifier)
    return error


def check_can_sign_in(ctx: AuthContext, user: User, *, method: str, identifier: str | None,
                      needs_confirmed_email: bool = False) -> None:
    """Refuse (and record) a disabled account, or an unconfirmed one when that is required."""
    if not user.is_active:
        raise _refused(ctx, method, identifier,
                       Forbidden("this account is disabled", code="account_disabled"), user.id)
    if needs_confirmed_email and ctx.settings.require_email_confirmation \
            and user.email_confirmed_at is None:
        raise _refused(ctx, method, identifier, Forbidden(
            "confirm your email address first: open the link we mailed you",
            code="email_not_confirmed"), user.id)


def login(session: Session, ctx: AuthContext, *, email: str, password: str) -> TokenPair:
    """Sign in with email and password; every outcome goes to the login history."""
    identifier = email.strip().lower()[:MAX_EMAIL_LENGTH]
    wrong = Unauthorized("email or password is wrong", code="invalid_credentials")
    try:
        identifier = normalize_email(email)
    except InvalidInput:
        raise _refused(ctx, "password", identifier, wrong, reason="invalid_email") from None
    try:
        ratelimit.hit(ctx, "login", account=identifier)
    except DomainError as exc:
        raise _refused(ctx, "password", identifier, exc) from None
    user = by_email(session, identifier)
    # Verified even without an account, so both misses take as long.
    matches = passwords.verify_password(user.password_hash if user else None, password)
    if user is None or not matches:
        reason = "unknown_account" if user is None else "wrong_password"
        raise _refused(ctx, "password", identifier, wrong, user.id if user else None, reason)
    check_can_sign_in(ctx, user, method="password", identifier=identifier,
                      needs_confirmed_email=True)
    assert user.password_hash is not None
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    ctx.record(method="password", success=True, user_id=user.id, identifier=identifier)
    return sign_in(session, ctx.settings, user)


def link_identity(
    session: Session,
    ctx: AuthContext,
    *,
    provider: str,
    subject: str,
    email: str | None,
    email_verified: bool,
    full_name: str | None = None,
    avatar_url: str | None = None,
) -> tuple[User, bool]:
    """The account of an outside identity (by subject, verified email, or new); True if new link.

    An address the provider does not vouch for never lands on an account: a new account
    is made without it (the identity keeps it), so nobody can claim someone else's email
    through a provider that does not check it.
    """
    normalized = None
    if email:
        try:
            normalized = normalize_email(email)
        except InvalidInput:
            normalized = None
    proven = normalized if email_verified else None
    identity = session.scalar(
        select(AuthIdentity).where(AuthIdentity.provider == provider,
                                   AuthIdentity.subject == subject)
    )
    if identity is not None:
        user = session.get(User, identity.user_id)
        assert user is not None
        if user.email is None and proven and by_email(session, proven) is None:
            # The provider now vouches for the address it would not vouch for at first.
            user.email = proven
            mark_email_confirmed(session, ctx, user, identity=(provider, subject))
            flush_unique(session, "email")
        return user, False
    user = by_email(session, normalized) if normalized else None
    if user is not None and not email_verified:
        # Linking on an unproven address would hand this account to whoever typed it.
        raise Conflict("an account with this email exists; sign in to it first",
                       code="email_taken")
    if user is None:
        user = User(email=proven, full_name=fields.from_provider(full_name),
                    avatar_url=fields.url_from_provider(avatar_url))
        session.add(user)
        flush_unique(session, "email")
    if proven and user.email == proven:
        mark_email_confirmed(session, ctx, user, identity=(provider, subject))
    session.add(AuthIdentity(user_id=user.id, provider=provider, subject=subject,
                             email=normalized))
    # Two first sign-ins of one identity at once: the loser's request answers 409, retry works.
    flush_unique(session, "identity")
    return user, True


def create_admin(session: Session, settings: Settings, *, email: str, password: str) -> User:
    """A confirmed admin account with a password (``billing admin create``)."""
    email = normalize_email(email)
    passwords.check_policy(password, min_length=settings.password_min_length, email=email)
    if by_email(session, email) is not None:
        raise Conflict(f"an account for {email} already exists; use `billing admin promote`",
                       code="email_taken")
    user = User(email=email, password_hash=passwords.hash_password(password), role="admin",
                email_confirmed_at=utc_now())
    session.add(user)
    flush_unique(session, "email")
    return user


def promote(session: Session, *, email: str) -> User:
    """Give the account with ``email`` the admin role (``billing admin promote``)."""
    email = normalize_email(email)
    user = session.scalar(select(User).where(func.lower(User.email) == email))
    if user is None:
        raise NotFound(f"no account has the email {email}", code="user_not_found")
    user.role = "admin"
    session.flush()
    return user

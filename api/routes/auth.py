"""Sign-up and every way to sign in: /api/auth."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Cookie, Depends, Query, Response
from fastapi.responses import RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.client import AuthContextDep
from api.deps import CurrentUser, RedisDep, ServiceSessionDep, SessionDep, SettingsDep
from api.schemas.auth import (
    ConfirmIn,
    ConfirmOut,
    LoginIn,
    LogoutIn,
    MagicLinkIn,
    MagicLinkVerifyIn,
    MethodsOut,
    OtpIn,
    OtpVerifyIn,
    RefreshIn,
    RegisterIn,
    RegisterOut,
    SentOut,
    TokenOut,
)
from services.auth import (
    accounts,
    addresses,
    google,
    magic_link,
    methods,
    otp,
    refresh,
    tokens,
)
from services.auth.refresh import TokenPair
from services.errors import Unauthorized

router = APIRouter(prefix="/api/auth", tags=["auth"])

STATE_COOKIE = "billing_oauth_state"
_COOKIE_PATH = "/api/auth/oauth/google"
_optional_bearer = HTTPBearer(auto_error=False)
# Error answers particular to sign-in (the generic ones come from api/error_docs.py).
_LIMITED = {429: {"description": "rate_limited: too many attempts; see Retry-After"}}
_SIGN_IN = {
    401: {"description": "the credentials, code or token are wrong, used or expired"},
    403: {"description": "account_disabled, or the email is not confirmed yet"},
}


def _tokens(pair: TokenPair) -> TokenOut:
    return TokenOut(access_token=pair.access_token, refresh_token=pair.refresh_token,
                    expires_in=pair.expires_in)


@router.get("/methods", response_model=MethodsOut)
def sign_in_methods(settings: SettingsDep) -> MethodsOut:
    """The ways to sign up and sign in that this server offers (public)."""
    offered = methods.enabled(settings)
    return MethodsOut(
        password=offered.password, magic_link=offered.magic_link, phone=offered.phone,
        google=offered.google, password_min_length=settings.password_min_length,
        email_confirmation_required=settings.require_email_confirmation,
    )


@router.post("/register", status_code=201, response_model=RegisterOut,
             responses={**_LIMITED, 409: {"description": "email_taken"}})
def register(body: RegisterIn, session: ServiceSessionDep, ctx: AuthContextDep) -> RegisterOut:
    """Create an account with email and password; a confirmation link is mailed."""
    user = accounts.register(session, ctx, email=body.email, password=body.password,
                             full_name=body.full_name)
    assert user.email is not None
    return RegisterOut(id=user.id, email=user.email,
                       email_confirmation_required=ctx.settings.require_email_confirmation)


@router.post("/confirm", response_model=ConfirmOut)
def confirm(body: ConfirmIn, session: ServiceSessionDep, ctx: AuthContextDep) -> ConfirmOut:
    """Confirm an email address (after sign-up, or a new one after an email change)."""
    user = addresses.confirm(session, ctx, token=body.token)
    assert user.email is not None
    return ConfirmOut(email=user.email)


@router.post("/email-change/undo", response_model=ConfirmOut,
             responses={409: {"description": "email_taken: proven by another account since"}})
def undo_email_change(
    body: ConfirmIn, session: ServiceSessionDep, ctx: AuthContextDep
) -> ConfirmOut:
    """Undo an email change from the link mailed to the old address: the old address comes
    back, the password goes and every session ends (sign in again by magic link)."""
    user = addresses.undo_change(session, ctx, token=body.token)
    assert user.email is not None
    return ConfirmOut(email=user.email)


@router.post("/login", response_model=TokenOut, responses={**_SIGN_IN, **_LIMITED})
def login(body: LoginIn, session: ServiceSessionDep, ctx: AuthContextDep) -> TokenOut:
    """Sign in with email and password."""
    return _tokens(accounts.login(session, ctx, email=body.email, password=body.password))


@router.post("/refresh", response_model=TokenOut, responses=_SIGN_IN)
def refresh_tokens(body: RefreshIn, session: ServiceSessionDep, ctx: AuthContextDep) -> TokenOut:
    """Exchange a refresh token for a new pair (the old one stops working)."""
    return _tokens(refresh.rotate(session, ctx, body.refresh_token))


# The bearer token is optional here (a refresh token alone signs out): say so in the schema.
@router.post("/logout", status_code=204, response_class=Response,
             openapi_extra={"security": [{}, {"HTTPBearer": []}]})
def logout(
    body: LogoutIn,
    session: ServiceSessionDep,
    ctx: AuthContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_optional_bearer)],
) -> Response:
    """Sign out: revoke the refresh token's session (all its access tokens with it) and the
    presented access token."""
    if body.refresh_token:
        refresh.revoke(session, ctx, body.refresh_token)
    if credentials is not None:
        try:
            tokens.revoke_access_token(
                session, ctx.redis,
                tokens.decode_access_token(ctx.settings, credentials.credentials),
            )
        except Unauthorized:
            pass  # an expired or foreign token needs no revoking
    return Response(status_code=204)


@router.post("/logout-everywhere", status_code=204, response_class=Response)
def logout_everywhere(
    user: CurrentUser, session: SessionDep, settings: SettingsDep, redis_client: RedisDep
) -> Response:
    """Sign out everywhere: end every sign-in of the account (every device, this one too)."""
    refresh.sign_out_everywhere(session, redis_client=redis_client, settings=settings,
                                user_id=user.id)
    return Response(status_code=204)


@router.post("/magic-link", status_code=202, response_model=SentOut, responses=_LIMITED)
def request_magic_link(
    body: MagicLinkIn, session: ServiceSessionDep, ctx: AuthContextDep
) -> SentOut:
    """Mail a one-time sign-in link (the same answer whether or not the account exists)."""
    magic_link.request(session, ctx, email=body.email)
    return SentOut(message="if an account has this email, a sign-in link is on its way",
                   expires_in=ctx.settings.magic_link_ttl_s)


@router.post("/magic-link/verify", response_model=TokenOut, responses=_SIGN_IN)
def verify_magic_link(
    body: MagicLinkVerifyIn, session: ServiceSessionDep, ctx: AuthContextDep
) -> TokenOut:
    """Exchange a magic-link token for tokens."""
    return _tokens(magic_link.verify(session, ctx, token=body.token))


@router.post("/otp", status_code=202, response_model=SentOut, responses=_LIMITED)
def request_otp(body: OtpIn, session: ServiceSessionDep, ctx: AuthContextDep) -> SentOut:
    """Text a six-digit sign-in code to the phone number."""
    otp.request_code(session, ctx, phone=body.phone)
    return SentOut(message="a code is on its way", expires_in=ctx.settings.otp_ttl_s)


@router.post("/otp/verify", response_model=TokenOut, responses={**_SIGN_IN, **_LIMITED})
def verify_otp(body: OtpVerifyIn, session: ServiceSessionDep, ctx: AuthContextDep) -> TokenOut:
    """Sign in (or sign up) with the phone number and its code."""
    return _tokens(otp.verify(session, ctx, phone=body.phone, code=body.code))


@router.get("/oauth/google/authorize", status_code=302, response_class=RedirectResponse)
def google_authorize(ctx: AuthContextDep) -> RedirectResponse:
    """Redirect to Google's consent page (state, nonce and PKCE included)."""
    url, state = google.authorize(ctx)
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        STATE_COOKIE, state, max_age=google.STATE_TTL_S, path=_COOKIE_PATH, httponly=True,
        samesite="lax", secure=str(ctx.settings.public_base_url).startswith("https://"),
    )
    return response


@router.get("/oauth/google/callback", response_model=TokenOut, responses={
    **_SIGN_IN, 404: {"description": "google_not_configured"},
    503: {"description": "Google cannot be reached"}})
def google_callback(
    session: ServiceSessionDep,
    ctx: AuthContextDep,
    response: Response,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=128)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
    state_cookie: Annotated[str | None, Cookie(alias=STATE_COOKIE)] = None,
) -> TokenOut:
    """Finish Google sign-in: tokens for the linked or new account."""
    pair = google.callback(session, ctx, code=code, state=state, cookie_state=state_cookie,
                           error=error)
    response.delete_cookie(STATE_COOKIE, path=_COOKIE_PATH)
    return _tokens(pair)

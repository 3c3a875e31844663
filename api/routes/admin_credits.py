"""Admin money routes: balance adjustments and the package catalogue (each change audited)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from api.deps import AdminUser, RequestIdDep, SessionDep
from api.idempotency import IdempotencyDep
from api.schemas.credits import (
    AdjustIn,
    AdjustOut,
    AdminPackageOut,
    PackageCreateIn,
    PackagePriceIn,
)
from services.credits import adjustments as admin_credits
from services.credits import packages

router = APIRouter(prefix="/api/user-management/admin", tags=["admin"])


@router.post(
    "/users/{user_id}/credits",
    response_model=AdjustOut,
    summary="Adjust a user's balance",
    responses={409: {"description": "negative_balance, or an Idempotency-Key conflict"}},
)
def adjust_credits(
    user_id: uuid.UUID,
    body: AdjustIn,
    admin: AdminUser,
    session: SessionDep,
    request_id: RequestIdDep,
    idem: IdempotencyDep,
) -> Any:
    """Add or take credits (signed ``amount``) with a reason; never below zero; audited."""

    def work() -> AdjustOut:
        done = admin_credits.adjust(
            session,
            admin_id=admin.id,
            user_id=user_id,
            amount=body.amount,
            reason=body.reason,
            request_id=request_id,
        )
        return AdjustOut(
            user_id=done.user_id,
            amount=done.amount,
            balance_before=done.balance_before,
            balance_after=done.balance_after,
            transaction_id=done.transaction_id,
        )

    return idem.run(session, user_id=admin.id, body=body, work=work)


@router.get(
    "/credit-packages", response_model=list[AdminPackageOut], summary="All packages, retired too"
)
def list_all_packages(admin: AdminUser, session: SessionDep) -> list[AdminPackageOut]:
    """Every package, in display order."""
    return [
        AdminPackageOut.model_validate(p)
        for p in packages.list_packages(session, include_retired=True)
    ]


@router.post(
    "/credit-packages", response_model=AdminPackageOut, status_code=201, summary="Add a package"
)
def create_package(
    body: PackageCreateIn,
    admin: AdminUser,
    session: SessionDep,
    request_id: RequestIdDep,
    idem: IdempotencyDep,
) -> Any:
    """A new package for sale; 409 ``package_exists`` if the id is taken."""

    def work() -> AdminPackageOut:
        package = packages.add(
            session,
            admin_id=admin.id,
            package_id=body.id,
            name=body.name,
            credits=body.credits,
            price_cents=body.price_cents,
            currency=body.currency,
            sort_order=body.sort_order,
            request_id=request_id,
        )
        return AdminPackageOut.model_validate(package)

    return idem.run(session, user_id=admin.id, body=body, work=work, status_code=201)


@router.put(
    "/credit-packages/{package_id}/price",
    response_model=AdminPackageOut,
    summary="Change a package's price",
)
def reprice_package(
    package_id: str,
    body: PackagePriceIn,
    admin: AdminUser,
    session: SessionDep,
    request_id: RequestIdDep,
) -> AdminPackageOut:
    """New price for new purchases; payments already started keep theirs."""
    package = packages.reprice(
        session,
        admin_id=admin.id,
        package_id=package_id,
        price_cents=body.price_cents,
        currency=body.currency,
        request_id=request_id,
    )
    return AdminPackageOut.model_validate(package)


@router.post(
    "/credit-packages/{package_id}/retire",
    response_model=AdminPackageOut,
    summary="Stop selling a package",
)
def retire_package(
    package_id: str, admin: AdminUser, session: SessionDep, request_id: RequestIdDep
) -> AdminPackageOut:
    """A retired package cannot be bought; old payments keep pointing at it (idempotent)."""
    package = packages.retire(
        session, admin_id=admin.id, package_id=package_id, request_id=request_id
    )
    return AdminPackageOut.model_validate(package)

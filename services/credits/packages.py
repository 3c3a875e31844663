"""Credit packages: what is for sale, and the admin changes to it (each one audited).

A package's id is its slug. Prices and credits are read from here at purchase
time and copied onto the payment, so a later price change or retirement never
alters a payment already started.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import CreditPackage
from services.admin import audit
from services.errors import Conflict, NotFound


def list_packages(session: Session, *, include_retired: bool = False) -> list[CreditPackage]:
    """Packages in display order; only the purchasable ones unless ``include_retired``."""
    query = select(CreditPackage).order_by(CreditPackage.sort_order, CreditPackage.id)
    if not include_retired:
        query = query.where(CreditPackage.active.is_(True))
    return list(session.scalars(query))


def get(session: Session, package_id: str, *, for_update: bool = False) -> CreditPackage:
    """The package ``package_id``; ``NotFound`` if there is none."""
    query = select(CreditPackage).where(CreditPackage.id == package_id)
    if for_update:
        query = query.with_for_update()
    package = session.scalar(query)
    if package is None:
        raise NotFound("no such credit package", code="package_not_found")
    return package


def purchasable(session: Session, package_id: str) -> CreditPackage:
    """The package if it can be bought now; a retired one is refused with 409."""
    package = get(session, package_id)
    if not package.active:
        raise Conflict("this credit package is retired", code="package_retired")
    return package


def _snapshot(package: CreditPackage) -> dict[str, Any]:
    return {
        "package_id": package.id,
        "name": package.name,
        "credits": package.credits,
        "price_cents": package.price_cents,
        "currency": package.currency,
        "active": package.active,
    }


def add(
    session: Session,
    *,
    admin_id: uuid.UUID,
    package_id: str,
    name: str,
    credits: int,
    price_cents: int,
    currency: str,
    sort_order: int = 0,
    request_id: str | None = None,
) -> CreditPackage:
    """Create a package for sale; 409 if the id is taken (retired ones included)."""
    if session.get(CreditPackage, package_id) is not None:
        raise Conflict("a credit package with this id exists", code="package_exists")
    package = CreditPackage(
        id=package_id,
        name=name,
        credits=credits,
        price_cents=price_cents,
        currency=currency,
        sort_order=sort_order,
        active=True,
    )
    session.add(package)
    session.flush()
    audit.record(
        session,
        admin_id=admin_id,
        action="package.create",
        before=None,
        after=_snapshot(package),
        request_id=request_id,
    )
    session.flush()
    return package


def reprice(
    session: Session,
    *,
    admin_id: uuid.UUID,
    package_id: str,
    price_cents: int,
    currency: str | None = None,
    request_id: str | None = None,
) -> CreditPackage:
    """Change a package's price (payments already started keep theirs)."""
    package = get(session, package_id, for_update=True)
    before = _snapshot(package)
    package.price_cents = price_cents
    if currency is not None:
        package.currency = currency
    session.flush()
    audit.record(
        session,
        admin_id=admin_id,
        action="package.reprice",
        before=before,
        after=_snapshot(package),
        request_id=request_id,
    )
    session.flush()
    return package


def retire(
    session: Session, *, admin_id: uuid.UUID, package_id: str, request_id: str | None = None
) -> CreditPackage:
    """Stop selling a package; its old payments keep pointing at it. Retiring twice is a no-op."""
    package = get(session, package_id, for_update=True)
    if not package.active:
        return package
    before = _snapshot(package)
    package.active = False
    session.flush()
    audit.record(
        session,
        admin_id=admin_id,
        action="package.retire",
        before=before,
        after=_snapshot(package),
        request_id=request_id,
    )
    session.flush()
    return package

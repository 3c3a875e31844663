"""Admin routes of the outgoing webhooks: endpoints, their delivery log, redelivery."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Response

from api.deps import AdminUser, RequestIdDep, SessionDep, SettingsDep
from api.schemas.params import Cursor, Limit
from api.schemas.webhooks import (
    DeliveryOut,
    DeliveryPageOut,
    EndpointCreatedOut,
    EndpointIn,
    EndpointListOut,
    EndpointOut,
)
from services.webhooks import delivery, endpoints

router = APIRouter(prefix="/api/user-management/admin/webhook-endpoints", tags=["admin"])


@router.post("", response_model=EndpointCreatedOut, status_code=201,
             summary="Add a webhook endpoint (its secret is shown once)",
             responses={400: {"description": "invalid_webhook_url, invalid_webhook_events"}})
def create_endpoint(body: EndpointIn, admin: AdminUser, session: SessionDep,
                    settings: SettingsDep, request_id: RequestIdDep) -> EndpointCreatedOut:
    """A receiver for the event types named (``*``: all); http(s), public addresses only
    unless ``BILLING_WEBHOOK_ALLOW_PRIVATE=true``."""
    created = endpoints.create(session, settings, admin_id=admin.id, url=body.url,
                               events=body.events, description=body.description,
                               request_id=request_id)
    out = EndpointOut.model_validate(created.endpoint)
    return EndpointCreatedOut(**out.model_dump(), secret=created.secret)


@router.get("", response_model=EndpointListOut, summary="Webhook endpoints")
def list_endpoints(admin: AdminUser, session: SessionDep) -> EndpointListOut:
    """Every endpoint not deleted, with whether it is enabled and why not."""
    return EndpointListOut(items=[EndpointOut.model_validate(e)
                                  for e in endpoints.list_endpoints(session)])


@router.get("/{endpoint_id}", response_model=EndpointOut, summary="One webhook endpoint")
def get_endpoint(endpoint_id: uuid.UUID, admin: AdminUser, session: SessionDep) -> EndpointOut:
    """The endpoint (never its secret)."""
    return EndpointOut.model_validate(endpoints.get(session, endpoint_id))


@router.delete("/{endpoint_id}", status_code=204, summary="Delete a webhook endpoint")
def delete_endpoint(endpoint_id: uuid.UUID, admin: AdminUser, session: SessionDep,
                    request_id: RequestIdDep) -> Response:
    """Stop sending to it; its delivery log stays."""
    endpoints.delete(session, admin_id=admin.id, endpoint_id=endpoint_id, request_id=request_id)
    return Response(status_code=204)


@router.get("/{endpoint_id}/deliveries", response_model=DeliveryPageOut,
            summary="An endpoint's delivery log")
def list_deliveries(endpoint_id: uuid.UUID, admin: AdminUser, session: SessionDep,
                    limit: Limit = 50, cursor: Cursor = None,
                    status: Literal["pending", "succeeded", "failed"] | None = None,
                    ) -> DeliveryPageOut:
    """Deliveries newest first, with attempts, last status and error."""
    endpoints.get(session, endpoint_id)
    page = delivery.list_deliveries(session, endpoint_id=endpoint_id, status=status,
                                    limit=limit, cursor=cursor)
    return DeliveryPageOut(items=[DeliveryOut.model_validate(d) for d in page.items],
                           next_cursor=page.next_cursor)


@router.post("/{endpoint_id}/deliveries/{delivery_id}/redeliver", response_model=DeliveryOut,
             status_code=202, summary="Send a delivery's event again")
def redeliver(endpoint_id: uuid.UUID, delivery_id: int, admin: AdminUser,
              session: SessionDep) -> DeliveryOut:
    """A new delivery of the same event (same event id) to the same endpoint."""
    again = delivery.redeliver(session, endpoint_id=endpoint_id, delivery_id=delivery_id)
    session.refresh(again)
    return DeliveryOut.model_validate(again)

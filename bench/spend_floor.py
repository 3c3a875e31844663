"""The floor under ``POST /credits/use``: FastAPI running the ledger's spend and nothing else.

``bench.spend`` serves this app with the same uvicorn settings and load as the real API, to
show what the framework plus the debit itself costs before any of the product's own work:
no token, no revocation check, no usage record, no middleware, no access log. The debit is
the real one (``ledger.spend`` through ``db.aio``), for a random bench user, so the
database does exactly the work it does for the real route.

Environment: ``BENCH_FLOOR_DATABASE_URL`` and ``BENCH_FLOOR_USERS`` (set by ``bench.spend``).
Not part of the product.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from api.schemas.credits import SpendIn, SpendOut
from db.aio import AsyncDatabase
from services.credits import ledger

USERS = [uuid.UUID(f"00000000-0000-4000-8000-{n:012d}")
         for n in range(1, int(os.environ.get("BENCH_FLOOR_USERS", "200")) + 1)]


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, AsyncDatabase]]:
    db = AsyncDatabase(os.environ["BENCH_FLOOR_DATABASE_URL"])
    await db.open()
    try:
        yield {"db": db}
    finally:
        await db.close()


app = FastAPI(lifespan=lifespan)


@app.post("/api/user-management/credits/use", response_model=SpendOut)
async def use(body: SpendIn, request: Request) -> SpendOut:
    entry = await ledger.spend(
        request.state.db, user_id=random.choice(USERS),  # noqa: S311
        credits=body.credits, description=body.description, endpoint=body.endpoint,
    )
    return SpendOut(balance=entry.balance_after, transaction_id=entry.id)

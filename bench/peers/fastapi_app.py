"""The FastAPI peer of `make bench-compare`: `PATCH /approvals/{id}` as the FastAPI backend did it.

Per request: the bearer JWT verified with PyJWT (HS256 pinned; exp, iat, sub, iss, aud and jti
required; the role must be approver or admin), the path id read as a UUID and the body validated
by pydantic (`status` APPROVED or REJECTED, `reason` up to 4000 characters, `expectedVersion` at
least 1, nothing else), then an `approval.decided` CloudEvent published, persistent and mandatory,
to a durable topic exchange on a channel with publisher confirms (aio-pika awaits the confirm), and
202 `{eventId, status, statusUrl}` with a `Location` header. Anything short of a confirm is a 503.

Run by the driver as `uvicorn fastapi_app:app --workers 2` (uvloop and httptools, uvicorn's
`standard` extra: the peer at its best). Configuration from the environment:

- PEER_AMQP_URL     amqp://guest:guest@127.0.0.1:5672/
- PEER_EXCHANGE     the topic exchange to publish to (declared durable here)
- PEER_JWT_SECRET   the HS256 key
- PEER_JWT_ISSUER / PEER_JWT_AUDIENCE   (default automation-engine, as automation-api)
"""

import json
import os
import uuid
from datetime import datetime, timezone
from typing import Literal, Optional

import aio_pika
import jwt
from fastapi import FastAPI, Header, HTTPException, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

AMQP_URL = os.environ.get("PEER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
EXCHANGE = os.environ.get("PEER_EXCHANGE", "bench-peer.events")
SECRET = os.environ.get("PEER_JWT_SECRET", "automation-engine-development-secret-do-not-use")
ISSUER = os.environ.get("PEER_JWT_ISSUER", "automation-engine")
AUDIENCE = os.environ.get("PEER_JWT_AUDIENCE", "automation-engine")
DECIDERS = {"approver", "admin"}

app = FastAPI(title="bench peer")
broker = {}


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["APPROVED", "REJECTED"]
    reason: Optional[str] = Field(default=None, max_length=4000)
    expectedVersion: Optional[int] = Field(default=None, ge=1)


@app.on_event("startup")
async def connect():
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    broker.update(connection=connection, exchange=exchange)


@app.on_event("shutdown")
async def disconnect():
    if "connection" in broker:
        await broker["connection"].close()


def problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def authenticate(authorization: Optional[str]) -> dict:
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401, "a bearer token is required")
    try:
        claims = jwt.decode(
            authorization[7:],
            SECRET,
            algorithms=["HS256"],
            issuer=ISSUER,
            audience=AUDIENCE,
            leeway=5,
            options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]},
        )
    except jwt.PyJWTError as error:
        raise HTTPException(401, f"invalid token: {error}") from error
    return claims


@app.patch("/approvals/{approval_id}", status_code=202)
async def decide(
    approval_id: uuid.UUID, body: Decision, response: Response, authorization: Optional[str] = Header(None)
):
    claims = authenticate(authorization)
    if claims.get("role") not in DECIDERS:
        raise HTTPException(403, "only approvers and admins decide approvals")
    event_id = str(uuid.uuid4())
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "/bench-peer/api",
        "type": "approval.decided",
        "time": datetime.now(timezone.utc).isoformat(),
        "datacontenttype": "application/json",
        "actorid": claims["sub"],
        "actortype": "user",
        "data": {"approvalId": str(approval_id), **body.model_dump(exclude_none=True)},
    }
    message = aio_pika.Message(
        json.dumps(event).encode(),
        content_type="application/cloudevents+json",
        message_id=event_id,
        type="approval.decided",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    try:
        await broker["exchange"].publish(message, routing_key="approval.decided", mandatory=True, timeout=5)
    except Exception as error:  # noqa: BLE001 - any failure to confirm is a 503, as in automation-api
        return problem(503, "Service Unavailable", f"the broker did not confirm the event: {error}")
    status_url = f"/api/v1/events/{event_id}"
    response.headers["Location"] = status_url
    return {"eventId": event_id, "status": "accepted", "statusUrl": status_url}

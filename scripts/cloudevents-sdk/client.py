#!/usr/bin/env python3
"""automation-engine as a client of the official CloudEvents SDK sees it.

Makes one `workflow.created` event per binding and content mode with the CloudEvents Python SDK
(`cloudevents` 2.x) and sends it the way that binding says: the RabbitMQ binding (`ce-` headers)
and the AMQP binding (`cloudEvents_` application properties, `time` as a native timestamp) over
pika to the events exchange, the HTTP binding to `POST /api/v1/events` (binary, structured, and
a batch). Then it reads the notifications the worker announces about them with the SDK's own
parser. Prints one JSON report on stdout; exits non-zero when a send fails.

Environment: AMQP_URL, EVENTS_EXCHANGE, NOTIFICATIONS_EXCHANGE, API_URL (base, no path), TOKEN
(a bearer token allowed to send workflow.created), WAIT_SECONDS (for the notifications, default 60).
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

import pika
from cloudevents.core.bindings import amqp, http, rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

FORMAT = JSONFormat()


def made(mode):
    """One event, with native extension values (an integer and a boolean) the bindings carry."""
    workflow = str(uuid.uuid4())
    event = CloudEvent(
        attributes={
            "type": "workflow.created",
            "source": f"/python-sdk/{mode}",
            "id": f"sdk-{mode}-{uuid.uuid4()}",
            "subject": workflow,
            "datacontenttype": "application/json",
            "priority": 3,
            "urgent": True,
        },
        data={"workflowId": workflow, "name": f"made with the CloudEvents SDK ({mode})"},
    )
    return event, workflow


def publish(channel, exchange, routing_key, headers, content_type, body):
    channel.basic_publish(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        properties=pika.BasicProperties(content_type=content_type, headers=headers, delivery_mode=2),
        mandatory=True,
    )


def post(api, token, message, content_type=None):
    headers = dict(message.headers)
    if content_type:
        headers["content-type"] = content_type
    headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{api}/api/v1/events", data=message.body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def main():
    env = os.environ
    connection = pika.BlockingConnection(pika.URLParameters(env["AMQP_URL"]))
    channel = connection.channel()
    channel.confirm_delivery()
    # The notifications are bound before anything is sent, so none is missed.
    queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue=queue, exchange=env["NOTIFICATIONS_EXCHANGE"], routing_key="#")

    sent, failures = [], []

    def note(mode, event, workflow, status=None, answer=None, known_as=None):
        # Over HTTP the API answers with the id the system knows the event by (it scopes ids to
        # the caller and the source); over AMQP it is the event's own id.
        sent.append({"mode": mode, "id": known_as or event.get_id(), "source": event.get_source(),
                     "workflowId": workflow, "status": status})
        if status is not None and status != 202:
            failures.append(f"{mode}: HTTP {status}: {answer}")

    def accepted(answer):
        try:
            body = json.loads(answer)
        except ValueError:
            return []
        return [a.get("eventId") for a in (body if isinstance(body, list) else [body])]

    for mode, binding, to in [
        ("rabbitmq-binary", rabbitmq, rabbitmq.to_binary),
        ("rabbitmq-structured", rabbitmq, rabbitmq.to_structured),
    ]:
        event, workflow = made(mode)
        message = to(event, FORMAT)
        publish(channel, env["EVENTS_EXCHANGE"], event.get_type(), message.headers, message.content_type, message.body)
        note(mode, event, workflow)

    for mode, to in [("amqp-binary", amqp.to_binary), ("amqp-structured", amqp.to_structured)]:
        event, workflow = made(mode)
        message = to(event, FORMAT)
        publish(channel, env["EVENTS_EXCHANGE"], event.get_type(), message.application_properties,
                message.properties.get("content-type"), message.application_data)
        note(mode, event, workflow)

    api, token = env["API_URL"], env["TOKEN"]
    for mode, to in [("http-binary", http.to_binary), ("http-structured", http.to_structured)]:
        event, workflow = made(mode)
        status, answer = post(api, token, to(event, FORMAT))
        note(mode, event, workflow, status, answer, (accepted(answer) or [None])[0])

    # The spec's batch format: an array of structured events (the SDK has no writer for it).
    batch = [made("http-batch") for _ in range(2)]
    body = ("[" + ",".join(FORMAT.write(event).decode() for event, _ in batch) + "]").encode()
    status, answer = post(api, token, http.HTTPMessage(headers={}, body=body), "application/cloudevents-batch+json")
    ids = accepted(answer) + [None] * len(batch)
    for (event, workflow), known_as in zip(batch, ids):
        note("http-batch", event, workflow, status, answer, known_as)

    # What the worker announced, read back with the SDK (the RabbitMQ binding, either mode).
    wanted = {s["id"] for s in sent}
    notifications = []
    deadline = time.monotonic() + float(env.get("WAIT_SECONDS", "60"))
    while wanted and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is None:
            time.sleep(0.1)
            continue
        message = rabbitmq.RabbitMQMessage(
            headers={k: str(v) for k, v in (properties.headers or {}).items()},
            content_type=properties.content_type,
            body=body,
        )
        try:
            notice = rabbitmq.from_rabbitmq(message, FORMAT)
        except Exception as error:  # noqa: BLE001 - the report names what the SDK refused
            failures.append(f"the SDK could not read a notification: {error!r}: {body[:200]!r}")
            continue
        cause = notice.get_extension("causationid")
        # The outcome of each event: its own notification, or event.rejected.
        if cause in wanted and notice.get_type() in ("workflow.created", "event.rejected"):
            wanted.discard(cause)
            notifications.append({"type": notice.get_type(), "id": notice.get_id(), "source": notice.get_source(),
                                  "causationid": cause, "time": notice.get_time().isoformat() if notice.get_time() else None})
    for missing in sorted(wanted):
        failures.append(f"no notification about {missing} within the wait")
    connection.close()
    print(json.dumps({"sent": sent, "notifications": notifications, "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

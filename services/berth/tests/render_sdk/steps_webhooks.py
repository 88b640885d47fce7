"""The owner's webhooks through Render's SDK. One is created before the
services, posting to a receiver this check runs on 127.0.0.1 (`berth up`
allows loopback targets), for deploy events only, and another turned off;
they are listed (paged), retrieved and updated. At the end, the deploy
events the services went through must have reached the receiver, in
Render's shape and signed with the webhook's secret (verified by PyPI's
standardwebhooks, not by berth's code), and be listed as the webhook's
events with the receiver's 200; the one turned off got nothing. Both are
then deleted."""

import http.server
import json
import threading

from render.public_api.api.webhooks import (
    create_webhook,
    delete_webhook,
    list_webhook_events,
    list_webhooks,
    retrieve_webhook,
    update_webhook,
)
from render.public_api.models import (
    EventType,
    Webhook,
    WebhookEventWithCursor,
    WebhookPATCHInput,
    WebhookPOSTInput,
    WebhookWithCursor,
)
from standardwebhooks.webhooks import Webhook as Verifier

from world import now, pages, raw_id

WANTED = [EventType.DEPLOY_STARTED, EventType.DEPLOY_ENDED]


class Receiver:
    """Records every post (path, headers, body) and answers 200 "ok"."""

    def __init__(self):
        posts = self.posts = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                posts.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body.decode("utf-8", "replace"),
                    }
                )
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


def webhooks_created(h, w):
    w.receiver = Receiver()
    op = "webhooks.create_webhook"
    body = WebhookPOSTInput(
        owner_id=w.owner,
        url=w.receiver.url("/deploys"),
        name=f"{w.prefix}-deploys",
        enabled=True,
        event_filter=WANTED,
    )
    got = h.call(op, create_webhook, body=body, expect=201, model=Webhook)
    if got:
        h.check(
            op,
            (got.url, got.enabled, sorted(t.value for t in got.event_filter))
            == (body.url, True, ["deploy_ended", "deploy_started"]),
            f"answered {got.to_dict()}",
        )
        h.check(op, got.secret.startswith("whsec_"), "the secret is not a whsec_ one")
        w.webhook, w.webhook_secret = got.id, got.secret
    else:
        w.webhook, w.webhook_secret = raw_id(h, "id"), (h.last_json() or {}).get("secret")
    body = WebhookPOSTInput(
        owner_id=w.owner,
        url=w.receiver.url("/off"),
        name=f"{w.prefix}-off",
        enabled=False,
        event_filter=[],
    )
    h.call(op, create_webhook, body=body, expect=201, model=Webhook, label="turned off")
    w.webhook_off = raw_id(h, "id")

    op = "webhooks.list_webhooks"
    listed = h.call(op, list_webhooks, owner_id=[w.owner], expect=200, model=WebhookWithCursor, many=True)
    if listed:
        ids = {i.webhook.id for i in listed}
        h.check(op, {w.webhook, w.webhook_off} <= ids, f"listed {sorted(ids)}")
    pages(h, op, lambda **kw: list_webhooks.sync_detailed(client=h.client, **kw), lambda i: i.webhook.id, 2)

    op = "webhooks.retrieve_webhook"
    if w.webhook:
        got = h.call(op, retrieve_webhook, w.webhook, expect=200, model=Webhook)
        if got:
            h.check(op, got.secret == w.webhook_secret, "the secret changed between answers")

    op = "webhooks.update_webhook"
    if w.webhook_off:
        got = h.call(
            op,
            update_webhook,
            w.webhook_off,
            body=WebhookPATCHInput(name=f"{w.prefix}-still-off", event_filter=[EventType.SERVER_FAILED]),
            expect=200,
            model=Webhook,
        )
        if got:
            h.check(
                op,
                (got.name, [t.value for t in got.event_filter], got.enabled)
                == (f"{w.prefix}-still-off", ["server_failed"], False),
                f"answered {got.to_dict()}",
            )


def webhooks_sent(h, w):
    if not w.webhook or not w.receiver:
        return
    op = "webhooks.list_webhook_events"
    # Deploys went through before this step: both types reached it.
    def arrived():
        types = {json.loads(p["body"]).get("type") for p in w.receiver.posts if p["path"] == "/deploys"}
        return True if {"deploy_started", "deploy_ended"} <= types else None

    h.check(op, h.eventually(60, arrived), f"the receiver got {len(w.receiver.posts)} posts, not both deploy types")
    for post in w.receiver.posts:
        try:
            Verifier(w.webhook_secret).verify(post["body"], post["headers"])
        except Exception as e:  # noqa: BLE001 — reported
            h.fail(op, f"a post's signature does not verify: {type(e).__name__}")
            break
    for post in w.receiver.posts[:1]:
        data = json.loads(post["body"])
        h.check(
            op,
            data.get("type") in {"deploy_started", "deploy_ended"}
            and str(data.get("data", {}).get("serviceId", "")).startswith("srv-")
            and data["data"].get("serviceName")
            and str(data["data"].get("id", "")).startswith("evt-"),
            f"a post is not in Render's shape: {post['body'][:200]}",
        )
    h.check(op, not [p for p in w.receiver.posts if p["path"] == "/off"], "the webhook turned off got posts")

    def listed():
        got = list_webhook_events.sync_detailed(w.webhook, client=h.client).parsed
        return got if isinstance(got, list) and len(got) >= 2 else None

    h.eventually(30, listed)
    events = h.call(op, list_webhook_events, w.webhook, expect=200, model=WebhookEventWithCursor, many=True)
    if events:
        sent = [e.webhook_event for e in events]
        h.check(op, all(e.status_code == 200 for e in sent), f"statuses {[e.status_code for e in sent]}")
        h.check(
            op,
            {e.event_type.value for e in sent} == {"deploy_started", "deploy_ended"},
            f"types {sorted({e.event_type.value for e in sent})}",
        )
        times = [e.sent_at for e in sent]
        h.check(op, times == sorted(times, reverse=True), "not newest first")
        recent = h.call(
            op,
            list_webhook_events,
            w.webhook,
            sent_after=now(),
            expect=200,
            model=WebhookEventWithCursor,
            many=True,
            label="sentAfter now",
        )
        h.check(op, recent == [], f"sentAfter now gave {len(recent or [])} sends", "sentAfter now")
        pages(
            h,
            op,
            lambda **kw: list_webhook_events.sync_detailed(w.webhook, client=h.client, **kw),
            lambda i: i.cursor,
            2,
        )

    op = "webhooks.delete_webhook"
    for hook in (w.webhook, w.webhook_off):
        if hook:
            h.call(op, delete_webhook, hook, expect=204)
    if w.webhook:
        h.call("webhooks.retrieve_webhook", retrieve_webhook, w.webhook, expect=404, label="deleted")

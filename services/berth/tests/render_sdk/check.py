#!/usr/bin/env python3
"""berth's API judged by Render's official Python SDK (PyPI `render` 1.5.0,
its generated `render.public_api` client).

Runs every operation of the SDK's `services`, `deploys`, `events`,
`registry_credentials`, `services_cron_jobs`, `one_off_jobs`,
`notification_settings`, `custom_domains`, `disks`, `webhooks`, `workspaces`, `users` and `metrics` modules that applies to image-backed services (the rest are listed in
NOT_APPLICABLE, each with why) against one installation, with a client that
raises on any status Render does not document. Each answer must carry the
status Render documents, parse into the SDK's model, and say what Render
would (names, types, images and digests round-trip; deploys end; filters
filter). Prints one PASS or FAIL line per operation and a summary; exits 1
when any failed. Every operation runs even when earlier ones failed, where
it can: ids it needs are then taken from the raw answer.

Usage: check.py --api-url http://127.0.0.1:PORT/v1 --owner-id usr-… \\
    --image HOST/REPO:v1 --image-digest sha256:… \\
    --image2 HOST/REPO:v2 --image2-digest sha256:… \\
    --registry-host HOST --registry-user USER --prefix sdk
with the API key in BERTH_API_KEY and the registry password in
BERTH_SDK_REGISTRY_PASSWORD (neither is ever printed). `--self-test` runs
it against fake_render.py instead, which it must pass.

The steps are in steps_owner.py (credentials, notification settings),
steps_webhooks.py, steps_services.py, steps_web.py, steps_disks.py, steps_domains.py, steps_deploys.py and steps_jobs.py, in the order main() runs them; what
they share is in world.py, the bookkeeping in harness.py.
"""

import argparse
import importlib.metadata
import os
import sys

import httpx

from harness import Harness
from steps_web import autoscaling, ip_allow_list, maintenance
from steps_webhooks import webhooks_created, webhooks_sent
from steps_deploys import cron, deploys, events
from steps_disks import disk_added_and_deleted, disk_snapshots, disks
from steps_domains import custom_domains
from steps_jobs import jobs
from steps_metrics import metrics
from steps_owner import credentials, notifications, workspace
from steps_services import (
    create_services,
    env_vars,
    instances,
    lifecycle,
    list_all,
    secret_files,
    teardown,
)
from world import World

SDK_VERSION = "1.5.0"

MODULES = [
    "services",
    "deploys",
    "events",
    "registry_credentials",
    "services_cron_jobs",
    "one_off_jobs",
    "notification_settings",
    "custom_domains",
    "disks",
    "webhooks",
    "workspaces",
    "users",
    "metrics",
]

# Operations of those modules that are not called: those that cannot apply
# to image-backed services on berth, and those berth has not built (said
# so), with why, for each.
NOT_APPLICABLE = {
    "services.create_ephemeral_shell": "ephemeral shells: berth's terminal is its own WebSocket (GET /v1/services/{id}/shell)",
    "services.preview_service": "preview instances: berth has no previews",
    "services.purge_cache": "build cache: an image-backed service is never built, so has none",
    "services.retrieve_service_outbound_ips": "outbound IPs: Render's egress addresses; berth NATs",
    "workspaces.retrieve_owner_members": "members: berth's owners have API keys, not members",
    "workspaces.update_workspace_member": "members: berth's owners have API keys, not members",
    "workspaces.remove_workspace_member": "members: berth's owners have API keys, not members",
    "metrics.get_replication_lag": "Postgres replicas: berth has no managed databases",
    "metrics.get_task_runs_completed": "workflow tasks: berth has no workflows",
    "metrics.get_task_runs_queued": "workflow tasks: berth has no workflows",
    "metrics.get_cpu_target": "not built: autoscaling targets are settings (serviceDetails.autoscaling), kept without history",
    "metrics.get_memory_target": "not built: autoscaling targets are settings (serviceDetails.autoscaling), kept without history",
    "metrics.get_active_connections": "not built: the router counts requests, not open connections",
    "metrics.get_bandwidth": "not built: the router does not meter bytes",
    "metrics.get_bandwidth_sources": "not built: the router does not meter bytes",
    "metrics.list_path_filter_values": "not built: the router keeps no per-path counts",
    "metrics.get_owner_metrics_stream": "not built: metrics streams (pushing metrics to your collector)",
    "metrics.upsert_owner_metrics_stream": "not built: metrics streams (pushing metrics to your collector)",
    "metrics.delete_owner_metrics_stream": "not built: metrics streams (pushing metrics to your collector)",
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--self-test", action="store_true", help="run against fake_render.py, not an API"
    )
    p.add_argument("--api-url", help="the API's base URL, ending in /v1")
    p.add_argument("--owner-id")
    p.add_argument("--image", help="an image reference in the registry")
    p.add_argument("--image-digest")
    p.add_argument("--image2", help="another tag of the same repository")
    p.add_argument("--image2-digest")
    p.add_argument("--registry-host")
    p.add_argument("--registry-user")
    p.add_argument("--prefix", default="sdk", help="prefix of the names of what is created")
    args = p.parse_args()
    if args.self_test:
        args.api_url = "http://fake-render.invalid/v1"
        args.owner_id = "usr-selftest"
        args.registry_host = "registry.invalid:5000"
        args.image, args.image2 = (
            f"{args.registry_host}/sdk/app:v1",
            f"{args.registry_host}/sdk/app:v2",
        )
        args.image_digest, args.image2_digest = "sha256:" + "1" * 64, "sha256:" + "2" * 64
        args.registry_user = "selftest"
        os.environ.setdefault("BERTH_API_KEY", "rnd_selftest")
        os.environ.setdefault("BERTH_SDK_REGISTRY_PASSWORD", "selftest-password")
    missing = [
        a
        for a in (
            "api_url",
            "owner_id",
            "image",
            "image_digest",
            "image2",
            "image2_digest",
            "registry_host",
            "registry_user",
        )
        if not getattr(args, a)
    ]
    if missing:
        p.error("missing: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    return args


def main():
    args = parse_args()
    version = importlib.metadata.version("render")
    if version != SDK_VERSION:
        print(
            f"render {version} is installed; this check is for render=={SDK_VERSION} (scripts/install-deps)"
        )
        return 2
    key = os.environ.get("BERTH_API_KEY")
    password = os.environ.get("BERTH_SDK_REGISTRY_PASSWORD")
    if not key or not password:
        print("BERTH_API_KEY and BERTH_SDK_REGISTRY_PASSWORD must be set")
        return 2
    transport = None
    if args.self_test:
        from fake_render import FakeRender

        fake = FakeRender(
            args.owner_id, {args.image: args.image_digest, args.image2: args.image2_digest}
        )
        transport = httpx.MockTransport(fake.handle)
    h = Harness(args.api_url, key, secrets=[key, password], transport=transport)
    w = World(
        owner=args.owner_id,
        image=args.image,
        digest=args.image_digest,
        image2=args.image2,
        digest2=args.image2_digest,
        registry_host=args.registry_host,
        registry_user=args.registry_user,
        registry_password=password,
        prefix=args.prefix,
    )
    for step in (
        workspace,
        credentials,
        webhooks_created,
        create_services,
        disks,
        deploys,
        instances,
        autoscaling,
        maintenance,
        ip_allow_list,
        env_vars,
        secret_files,
        custom_domains,
        notifications,
        cron,
        jobs,
        lifecycle,
        list_all,
        events,
        metrics,
        disk_snapshots,
        disk_added_and_deleted,
        webhooks_sent,
        teardown,
    ):
        h.log(f"step {step.__name__}")
        h.guarded(step, h, w)
    return h.report(MODULES, NOT_APPLICABLE)


if __name__ == "__main__":
    sys.exit(main())

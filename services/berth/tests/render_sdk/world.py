"""What the check's steps share: the services it creates and what it
learned of them, and the checks more than one step makes (a service as
Render would describe it, a deploy's image, waiting for a deploy to end,
cursor paging, event details)."""

import datetime
from dataclasses import dataclass, field

from render.public_api import errors
from render.public_api.api.deploys import retrieve_deploy
from render.public_api.models import (
    BackgroundWorkerDetails,
    CronJobDetails,
    Deploy,
    Disk,
    DockerDetails,
    PrivateServiceDetails,
    ServiceRuntime,
    ServiceType,
    WebServiceDetails,
)
from render.public_api.types import Unset

from harness import describe, details_class, show

FINAL = {"live", "deactivated", "build_failed", "update_failed", "canceled", "pre_deploy_failed"}

# Workers and cron runs sleep; web and private services serve HTTP on
# $PORT, with the health check path a file they write first.
SLEEPER = "sh -c 'trap \"exit 0\" TERM; while true; do sleep 1; done'"
SERVER = "sh -c 'echo ok > /tmp/healthz; " "exec /bin/busybox httpd -f -p ${PORT:-10000} -h /tmp'"
CRON_RUN = "sh -c 'sleep 60'"
SCHEDULE = "0 3 * * *"
HEALTH = "/healthz"
# The private service's disk.
DISK_NAME = "data"
DISK_PATH = "/var/lib/data"

DETAILS = {
    ServiceType.BACKGROUND_WORKER: BackgroundWorkerDetails,
    ServiceType.WEB_SERVICE: WebServiceDetails,
    ServiceType.PRIVATE_SERVICE: PrivateServiceDetails,
    ServiceType.CRON_JOB: CronJobDetails,
}


@dataclass
class Svc:
    """One service the scenario creates, and what it learned of it."""

    kind: str  # label in failure lines
    type_: ServiceType
    name: str
    command: str
    image: str = None  # what the service is configured with
    id: str = None
    deploy: str = None  # the initial deploy
    # Its disk's (name, mountPath, sizeGB) as last set (the private
    # service's is created with one).
    disk: tuple = (DISK_NAME, DISK_PATH, 1)


@dataclass
class World:
    owner: str
    image: str
    digest: str
    image2: str
    digest2: str
    registry_host: str
    registry_user: str
    registry_password: str
    prefix: str
    credential: str = None
    spare_credential: str = None
    canceled_deploy: str = None
    services: dict = field(default_factory=dict)  # kind -> Svc
    # The webhooks (steps_webhooks.py): the one posting to `receiver`, its
    # secret, and the one turned off.
    receiver: object = None
    webhook: str = None
    webhook_secret: str = None
    webhook_off: str = None


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def raw_id(h, *path):
    """An id from the last answer's raw JSON (when the SDK refused it but
    the scenario needs the id to go on)."""
    if h.last is None or not h.last.is_success:
        return None
    data = h.last_json()
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, str) else None


def check_service(h, op, w, svc, got, label, image=None, name=None):
    """What Render would say of `svc`."""
    name = name or svc.name
    image = image or svc.image
    if svc.id:
        h.check(op, got.id == svc.id, f"id {show(got.id)}, not {svc.id}", label)
    h.check(op, got.name == name, f"name {show(got.name)}, not {name!r}", label)
    h.check(op, got.type_ == svc.type_, f"type {show(got.type_)}", label)
    h.check(op, got.owner_id == w.owner, f"ownerId {show(got.owner_id)}", label)
    h.check(op, got.image_path == image, f"imagePath {show(got.image_path)}, not {image!r}", label)
    rc = got.registry_credential
    h.check(
        op,
        not isinstance(rc, Unset) and rc.id == w.credential,
        f"registryCredential {show(rc if isinstance(rc, Unset) else rc.id)}, not {w.credential}",
        label,
    )
    details = got.service_details
    want = DETAILS[svc.type_]
    if not h.check(
        op,
        isinstance(details, want),
        f"serviceDetails parse as {type(details).__name__}, not {want.__name__}",
        label,
    ):
        return
    h.check(
        op,
        details.runtime == ServiceRuntime.IMAGE,
        f"runtime {show(details.runtime)}, not 'image'",
        label,
    )
    env = details.env_specific_details
    if h.check(
        op,
        isinstance(env, DockerDetails),
        f"envSpecificDetails parse as {type(env).__name__}",
        label,
    ):
        h.check(
            op,
            env.docker_command == svc.command,
            f"dockerCommand {show(env.docker_command)}, not the one created",
            label,
        )
    if svc.type_ == ServiceType.CRON_JOB:
        h.check(op, details.schedule == SCHEDULE, f"schedule {show(details.schedule)}", label)
    if svc.type_ == ServiceType.WEB_SERVICE:
        h.check(
            op,
            details.health_check_path == HEALTH,
            f"healthCheckPath {show(details.health_check_path)}",
            label,
        )
    if svc.type_ == ServiceType.PRIVATE_SERVICE:
        disk = details.disk
        h.check(
            op,
            isinstance(disk, Disk)
            and disk.id.startswith("dsk-")
            and (disk.name, disk.mount_path, disk.size_gb) == svc.disk,
            f"disk {show(disk)}, not {svc.disk}",
            label,
        )


def wait_deploy(h, svc, deploy_id, label, within=90):
    """Polls the deploy until it ends; returns (last Deploy parsed or None,
    final status or None)."""
    op = "deploys.retrieve_deploy"
    last = [None, None]

    def ended():
        got = h.call(op, retrieve_deploy, svc.id, deploy_id, expect=200, model=Deploy, label=label)
        if got:
            h.check(op, got.id == deploy_id, f"id {show(got.id)}, not {deploy_id}", label)
            last[0] = got
            last[1] = None if isinstance(got.status, Unset) else got.status.value
        elif h.last is not None and h.last.is_success:
            data = h.last_json()
            status = data.get("status") if isinstance(data, dict) else None
            last[1] = status if isinstance(status, str) else None
        else:
            return "failed"  # recorded already
        return True if last[1] in FINAL else None

    if h.eventually(within, ended) is None:
        h.fail(op, f"no final status within {within} s (last {last[1]})", label)
    h.log(f"{label} {deploy_id}: {last[1]}")
    return last[0], last[1]


def check_image(h, op, deploy, ref, digest, label):
    image = None if deploy is None else deploy.image
    if not h.check(
        op, image is not None and not isinstance(image, Unset), "no image on the deploy", label
    ):
        return
    h.check(op, image.ref == ref, f"image.ref {show(image.ref)}, not {ref!r}", label)
    h.check(op, image.sha == digest, f"image.sha {show(image.sha)}, not the pushed digest", label)


def check_trigger(h, op, deploy, want, label):
    h.check(
        op, deploy.trigger == want, f"trigger {show(deploy.trigger)}, not {want.value!r}", label
    )


def pages(h, op, fetch, key, min_items):
    """Cursor paging: limit=2, then the last item's cursor, until a short
    page; no item twice, and at least `min_items` in all."""
    label = "limit+cursor"
    seen, cursor = [], None
    for _ in range(20):
        kwargs = {"limit": 2} if cursor is None else {"limit": 2, "cursor": cursor}
        h.ran(op)
        try:
            page = fetch(**kwargs).parsed
        except errors.UnexpectedStatus as e:
            h.fail(op, f"paging: status {e.status_code}", label)
            return
        except Exception as e:  # noqa: BLE001 — the plain call says more
            h.fail(op, f"paging: {describe(e)}", label)
            return
        if not isinstance(page, list):
            h.fail(op, f"paging: page is {type(page).__name__}", label)
            return
        if not h.check(op, len(page) <= 2, f"limit=2 gave {len(page)} items", label):
            return
        seen += [key(i) for i in page]
        if len(page) < 2:
            break
        cursor = page[-1].cursor
    h.check(op, len(seen) == len(set(seen)), "an item came on two pages", label)
    h.check(
        op,
        len(seen) >= min_items,
        f"paging found {len(seen)} items, not at least {min_items}",
        label,
    )


def details_match(h, op, event_type, details, label):
    """The details must parse as the class for the event's type. (The SDK's
    own union parse cannot tell: any object without `buildId` and `message`
    parses as its second candidate, ArtifactSourceChanged.)"""
    cls = details_class(event_type)
    if not h.check(op, cls is not None, f"the SDK has no details model for {event_type!r}", label):
        return None
    try:
        return cls.from_dict(details)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        h.fail(op, f"{event_type} details do not parse as {cls.__name__}: {describe(e)}", label)
        return None

"""Disks: the private service's disk (made with it) listed with filters,
retrieved, grown and renamed; a smaller size refused. At the end, a disk
added to the worker (one to a service that has one, or to a cron job,
refused) and deleted again."""

from render.public_api.api.services import scale_service
from render.public_api.api.disks import (
    add_disk,
    delete_disk,
    list_disks,
    retrieve_disk,
    update_disk,
)
from render.public_api.models import (
    DiskDetails,
    DiskPATCH,
    DiskPOST,
    DiskWithCursor,
    Error,
    ScaleServiceBody,
)

from harness import show
from world import DISK_NAME, DISK_PATH


def check_disk(h, op, got, sid, name, size, label):
    """What Render would say of the private service's disk."""
    h.check(op, got.id.startswith("dsk-"), f"id {show(got.id)}", label)
    h.check(op, got.service_id == sid, f"serviceId {show(got.service_id)}, not {sid}", label)
    h.check(
        op,
        (got.name, got.mount_path, got.size_gb) == (name, DISK_PATH, size),
        f"name/mountPath/sizeGB {show((got.name, got.mount_path, got.size_gb))}",
        label,
    )


def disks(h, w):
    private = w.services["private_service"]
    if not private.id:
        return
    sid = private.id

    op = "disks.list_disks"
    got = h.call(op, list_disks, expect=200, model=DiskWithCursor, many=True, label="all")
    disk_id = None
    if got is not None:
        mine = [i.disk for i in got if i.disk.service_id == sid]
        if h.check(op, len(mine) == 1, f"{len(mine)} disks of the private service", "all"):
            disk_id = mine[0].id
            check_disk(h, op, mine[0], sid, DISK_NAME, 1, "all")
    if disk_id is None:
        return
    for label, filters, want in (
        ("name", {"name": [DISK_NAME]}, {disk_id}),
        ("serviceId", {"service_id": [sid]}, {disk_id}),
        ("diskId", {"disk_id": [disk_id]}, {disk_id}),
        ("other name", {"name": [f"{DISK_NAME}-none"]}, set()),
    ):
        got = h.call(
            op, list_disks, expect=200, model=DiskWithCursor, many=True, label=label, **filters
        )
        if got is not None:
            ids = {i.disk.id for i in got}
            h.check(op, ids == want, f"lists {sorted(ids)}, not {sorted(want)}", label)

    op = "disks.retrieve_disk"
    got = h.call(op, retrieve_disk, disk_id, expect=200, model=DiskDetails)
    if got:
        check_disk(h, op, got, sid, DISK_NAME, 1, None)

    op = "disks.update_disk"
    h.call(
        op,
        update_disk,
        disk_id,
        body=DiskPATCH(size_gb=0),
        expect=400,
        model=Error,
        label="smaller",
    )
    got = h.call(
        op,
        update_disk,
        disk_id,
        body=DiskPATCH(size_gb=2, name=f"{DISK_NAME}-2"),
        expect=200,
        model=DiskDetails,
        label="grown",
    )
    if got:
        check_disk(h, op, got, sid, f"{DISK_NAME}-2", 2, "grown")
        private.disk = (f"{DISK_NAME}-2", DISK_PATH, 2)


def disk_added_and_deleted(h, w):
    """Runs last before teardown: each add and delete deploys the worker."""
    worker = w.services["background_worker"]
    if not worker.id:
        return
    op = "disks.add_disk"
    # Refused: two instances (the worker, scaled in an earlier step), a
    # service with a disk, a cron job.
    for label, svc in (
        ("two instances", worker),
        ("a service with a disk", w.services["private_service"]),
        ("a cron job", w.services["cron_job"]),
    ):
        if svc.id:
            h.call(
                op,
                add_disk,
                body=DiskPOST(name="extra", size_gb=1, mount_path="/srv/extra", service_id=svc.id),
                expect=400,
                model=Error,
                label=label,
            )
    h.call(
        "services.scale_service",
        scale_service,
        worker.id,
        body=ScaleServiceBody(num_instances=1),
        expect=202,
    )
    got = h.call(
        op,
        add_disk,
        body=DiskPOST(name="extra", size_gb=3, mount_path="/srv/extra", service_id=worker.id),
        expect=201,
        model=DiskDetails,
        label="the worker",
    )
    if not got:
        return
    h.check(op, got.id.startswith("dsk-"), f"id {show(got.id)}", "the worker")
    h.check(
        op,
        (got.service_id, got.name, got.mount_path, got.size_gb)
        == (worker.id, "extra", "/srv/extra", 3),
        f"serviceId/name/mountPath/sizeGB {show((got.service_id, got.name, got.mount_path, got.size_gb))}",
        "the worker",
    )
    op = "disks.delete_disk"
    h.call(op, delete_disk, got.id, expect=204, label="the worker's")
    h.call("disks.retrieve_disk", retrieve_disk, got.id, expect=404, model=Error, label="deleted")
    h.call(op, delete_disk, got.id, expect=404, label="again")

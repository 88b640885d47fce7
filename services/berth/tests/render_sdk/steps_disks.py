"""Disks: the private service's disk (made with it) listed with filters,
retrieved, grown and renamed; a smaller size refused. Near the end, its
snapshots: one asked for (berth's own route; Render takes them daily),
listed, and restored (an unknown key refused). At the end, a disk added to
the worker (one to a service that has one, or to a cron job, refused) and
deleted again."""

from render.public_api.api.services import scale_service
from render.public_api.api.disks import (
    add_disk,
    delete_disk,
    list_disks,
    list_snapshots,
    restore_snapshot,
    retrieve_disk,
    update_disk,
)
from render.public_api.models import (
    DiskDetails,
    DiskPATCH,
    DiskPOST,
    DiskSnapshot,
    DiskWithCursor,
    Error,
    ScaleServiceBody,
    SnapshotRestorePOST,
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


def disk_snapshots(h, w):
    """The private service's disk: a snapshot asked for through berth's own
    route (once the disk is on a node), listed in Render's shape (status
    201, as Render documents it), and restored; an unknown key is 404."""
    private = w.services["private_service"]
    if not private.id:
        return
    op = "disks.list_snapshots"
    got = h.call(op, list_disks, expect=200, model=DiskWithCursor, many=True, label="its disk")
    mine = [i.disk.id for i in got or [] if i.disk.service_id == private.id]
    if not h.check(op, len(mine) == 1, f"{len(mine)} disks of the private service", "its disk"):
        return
    disk_id = mine[0]
    before = h.call(op, list_snapshots, disk_id, expect=201, model=DiskSnapshot, many=True)
    if before is None:
        return

    def asked():
        r = h.raw.post(f"/disks/{disk_id}/snapshots")
        return True if r.status_code == 202 else None

    if not h.check(op, h.eventually(90, asked), "no snapshot could be asked for in 90 s", "asked"):
        return

    def taken():
        got = h.call(op, list_snapshots, disk_id, expect=201, model=DiskSnapshot, many=True)
        return got if got is None or len(got) > len(before) else None

    got = h.eventually(90, taken, every=1)
    if not h.check(op, bool(got) and len(got) > len(before), "no new snapshot listed in 90 s", "taken"):
        return
    newest = got[0]
    h.check(
        op,
        newest.snapshot_key.startswith("snp-") and newest.created_at is not None,
        f"snapshotKey/createdAt {show((newest.snapshot_key, newest.created_at))}",
        "taken",
    )

    op = "disks.restore_snapshot"
    h.call(
        op,
        restore_snapshot,
        disk_id,
        body=SnapshotRestorePOST(snapshot_key="snp-" + "a" * 20),
        expect=404,
        model=Error,
        label="unknown key",
    )
    back = h.call(
        op,
        restore_snapshot,
        disk_id,
        body=SnapshotRestorePOST(snapshot_key=newest.snapshot_key),
        expect=200,
        model=DiskDetails,
        label="the newest",
    )
    if back:
        h.check(op, back.id == disk_id, f"id {show(back.id)}, not {disk_id}", "the newest")

"""Deploys (cancel, another tag, rollback), cron job runs, and the events
all of it leaves."""

import datetime

from render.public_api.api.deploys import (
    cancel_deploy,
    create_deploy,
    list_deploys,
    retrieve_deploy,
    rollback_deploy,
)
from render.public_api.api.events import retrieve_event
from render.public_api.api.services import list_events
from render.public_api.api.services_cron_jobs import cancel_cron_job_run, run_cron_job
from render.public_api.models import (
    CreateDeployBody,
    CronJobRun,
    CronJobRunStatus,
    Deploy,
    DeployStatus,
    DeployTrigger,
    DeployWithCursor,
    Event,
    EventStatus,
    RollbackDeployBody,
    ServiceEventType,
    ServiceEventWithCursor,
)
from render.public_api.types import Unset

from harness import show
from world import check_image, check_trigger, details_match, now, pages, raw_id, wait_deploy


# Deploys, on the worker.


def deploys(h, w):
    svc = w.services["background_worker"]
    if not svc.id:
        return
    op = "deploys.list_deploys"
    items = h.call(
        op, list_deploys, svc.id, expect=200, model=DeployWithCursor, many=True, label="no filter"
    )
    if items is not None:
        ids = [i.deploy.id for i in items if not isinstance(i.deploy, Unset)]
        h.check(op, len(ids) == len(items), "items without a deploy", "no filter")
        h.check(
            op, all(isinstance(i.cursor, str) for i in items), "items without a cursor", "no filter"
        )
        h.check(op, svc.deploy in ids, "the initial deploy is not listed", "no filter")

    if svc.deploy:
        op = "deploys.retrieve_deploy"
        first = h.call(
            op, retrieve_deploy, svc.id, svc.deploy, expect=200, model=Deploy, label="initial"
        )
        if first:
            check_image(h, op, first, w.image, w.digest, "initial")

    # A deploy canceled while it runs (a worker must stay up a while
    # before it counts as healthy): the live one keeps serving.
    op = "deploys.create_deploy"
    running = h.call(
        op,
        create_deploy,
        svc.id,
        body=CreateDeployBody(),
        expect=201,
        model=Deploy,
        label="redeploy",
    )
    running_id = running.id if running else raw_id(h, "id")
    w.canceled_deploy = running_id
    if running:
        check_trigger(h, op, running, DeployTrigger.API, "redeploy")
    op = "deploys.cancel_deploy"
    if running_id:
        got = h.call(op, cancel_deploy, svc.id, running_id, expect=200, model=Deploy)
        if got:
            h.check(op, got.id == running_id, f"answered deploy {show(got.id)}, not {running_id}")
        _, status = wait_deploy(h, svc, running_id, "canceled deploy")
        h.check(op, status == "canceled", f"the deploy ended {status}, not canceled")
    else:
        h.fail(op, "never called: no deploy to cancel")

    # A deploy of another tag of the same image.
    op = "deploys.create_deploy"
    tagged = h.call(
        op,
        create_deploy,
        svc.id,
        body=CreateDeployBody(image_url=w.image2),
        expect=201,
        model=Deploy,
        label="imageUrl",
    )
    tagged_id = tagged.id if tagged else raw_id(h, "id")
    if tagged_id:
        deploy, status = wait_deploy(h, svc, tagged_id, "imageUrl deploy")
        h.check(op, status == "live", f"the imageUrl deploy ended {status}, not live", "imageUrl")
        if deploy:
            check_image(
                h, "deploys.retrieve_deploy", deploy, w.image2, w.digest2, "imageUrl deploy"
            )
            check_trigger(
                h, "deploys.retrieve_deploy", deploy, DeployTrigger.API, "imageUrl deploy"
            )
        if svc.deploy:
            old = h.call(
                "deploys.retrieve_deploy",
                retrieve_deploy,
                svc.id,
                svc.deploy,
                expect=200,
                model=Deploy,
                label="superseded",
            )
            if old:
                h.check(
                    "deploys.retrieve_deploy",
                    old.status == DeployStatus.DEACTIVATED,
                    f"the superseded initial deploy is {show(old.status)}, not deactivated",
                    "superseded",
                )

    # Back to the initial deploy's digest.
    op = "deploys.rollback_deploy"
    if svc.deploy:
        got = h.call(
            op,
            rollback_deploy,
            svc.id,
            body=RollbackDeployBody(deploy_id=svc.deploy),
            expect=201,
            model=Deploy,
        )
        rollback_id = got.id if got else raw_id(h, "id")
        if got:
            check_trigger(h, op, got, DeployTrigger.ROLLBACK, None)
        if rollback_id:
            deploy, status = wait_deploy(h, svc, rollback_id, "rollback")
            h.check(op, status == "live", f"the rollback ended {status}, not live")
            if deploy:
                # Its digest, not its tag: the reference may name either.
                image = deploy.image
                ok = not isinstance(image, Unset) and image.sha == w.digest
                h.check(op, ok, "the rollback did not deploy the initial deploy's digest")
    else:
        h.fail(op, "never called: no initial deploy")

    op = "deploys.list_deploys"
    live = h.call(
        op,
        list_deploys,
        svc.id,
        expect=200,
        model=DeployWithCursor,
        many=True,
        label="status",
        status=[DeployStatus.LIVE],
    )
    if live is not None:
        statuses = {show(i.deploy.status) for i in live if not isinstance(i.deploy, Unset)}
        h.check(op, statuses <= {"'live'"}, f"status=live lists {sorted(statuses)}", "status")
        h.check(
            op, len(live) == 1, f"status=live lists {len(live)} deploys, not the one live", "status"
        )
    pages(
        h,
        op,
        lambda **kw: list_deploys.sync_detailed(svc.id, client=h.client, **kw),
        lambda i: i.deploy.id,
        min_items=4,
    )


# Cron jobs.


def cron(h, w):
    svc = w.services["cron_job"]
    if not svc.id:
        return
    op = "services_cron_jobs.run_cron_job"
    run = h.call(op, run_cron_job, svc.id, expect=200, model=CronJobRun)
    run_id = run.id if run else raw_id(h, "id")
    op = "services_cron_jobs.cancel_cron_job_run"
    h.call(op, cancel_cron_job_run, svc.id, expect=204)
    if not run_id:
        return

    def ended():
        got = h.call(
            "services.list_events",
            list_events,
            svc.id,
            expect=200,
            model=ServiceEventWithCursor,
            many=True,
            label="type cron_job_run_ended",
            type_=ServiceEventType.CRON_JOB_RUN_ENDED,
            limit=100,
        )
        raw = h.last_json()
        if got is None and not (h.last is not None and h.last.is_success and isinstance(raw, list)):
            return "failed"  # recorded already
        for item in raw:
            event = item.get("event") if isinstance(item, dict) else None
            details = event.get("details") if isinstance(event, dict) else None
            if isinstance(details, dict) and details.get("cronJobRunId") == run_id:
                return event
        return None

    event = h.eventually(30, ended)
    if event == "failed":
        return
    if h.check(
        op, event is not None, "no cron_job_run_ended event for the canceled run within 30 s"
    ):
        h.check(
            op,
            event.get("type") == "cron_job_run_ended",
            f"type={event.get('type')!r} listed for type=cron_job_run_ended",
        )
        ended_run = details_match(
            h, "services.list_events", "cron_job_run_ended", event["details"], "canceled run"
        )
        if ended_run:
            h.check(
                op,
                ended_run.status == CronJobRunStatus.CANCELED,
                f"the run ended {show(ended_run.status)}, not canceled",
            )


# Events.


def events(h, w):
    worker = w.services["background_worker"]
    if not worker.id:
        return
    op = "services.list_events"
    got = h.call(
        op,
        list_events,
        worker.id,
        expect=200,
        model=ServiceEventWithCursor,
        many=True,
        label="no filter",
        limit=100,
    )
    raw = h.last_json()
    listed = []
    if got is not None and isinstance(raw, list):
        for item, data in zip(got, raw):
            event = item.event
            h.check(
                op,
                event.service_id == worker.id,
                f"event of {show(event.service_id)} listed",
                "no filter",
            )
            h.check(op, isinstance(item.cursor, str), "items without a cursor", "no filter")
            details_match(h, op, event.type_.value, data["event"]["details"], event.type_.value)
            listed.append(event)
        types = {e.type_.value for e in listed}
        for want in (
            "deploy_started",
            "deploy_ended",
            "instance_count_changed",
            "service_suspended",
            "service_resumed",
        ):
            h.check(op, want in types, f"no {want} event after what the scenario did", "no filter")

    got = h.call(
        op,
        list_events,
        worker.id,
        expect=200,
        model=ServiceEventWithCursor,
        many=True,
        label="type deploy_ended",
        type_=ServiceEventType.DEPLOY_ENDED,
        limit=100,
    )
    raw = h.last_json()
    if got is not None and isinstance(raw, list):
        h.check(
            op,
            all(i.event.type_ == ServiceEventType.DEPLOY_ENDED for i in got),
            "type=deploy_ended lists other types",
            "type",
        )
        ended = [details_match(h, op, "deploy_ended", d["event"]["details"], "type") for d in raw]
        by_deploy = {e.deploy_id: e for e in ended if e is not None}
        for deploy_id, what, status in (
            (worker.deploy, "initial", EventStatus.SUCCEEDED),
            (w.canceled_deploy, "canceled", EventStatus.CANCELED),
        ):
            e = by_deploy.get(deploy_id)
            if deploy_id and h.check(
                op, e is not None, f"no deploy_ended event names the {what} deploy", "type"
            ):
                h.check(
                    op,
                    e.deploy_status == status,
                    f"the {what} deploy's deployStatus is {show(e.deploy_status)}",
                    "type",
                )

    got = h.call(
        op,
        list_events,
        worker.id,
        expect=200,
        model=ServiceEventWithCursor,
        many=True,
        label="type instance_count_changed",
        type_=ServiceEventType.INSTANCE_COUNT_CHANGED,
    )
    raw = h.last_json()
    if got is not None and isinstance(raw, list):
        counts = [
            details_match(h, op, "instance_count_changed", d["event"]["details"], "type")
            for d in raw
        ]
        h.check(
            op,
            any(c is not None and (c.from_instances, c.to_instances) == (1, 2) for c in counts),
            "no instance_count_changed from 1 to 2",
            "type",
        )

    got = h.call(
        op,
        list_events,
        worker.id,
        expect=200,
        model=ServiceEventWithCursor,
        many=True,
        label="startTime",
        start_time=now() + datetime.timedelta(hours=1),
    )
    if got is not None:
        h.check(op, got == [], f"startTime in the future lists {len(got)} events", "startTime")
    got = h.call(
        op,
        list_events,
        worker.id,
        expect=200,
        model=ServiceEventWithCursor,
        many=True,
        label="endTime",
        end_time=now() + datetime.timedelta(hours=1),
    )
    if got is not None:
        h.check(op, len(got) > 0, "endTime in the future lists no events", "endTime")
    pages(
        h,
        op,
        lambda **kw: list_events.sync_detailed(worker.id, client=h.client, **kw),
        lambda i: i.event.id,
        min_items=5,
    )

    op = "events.retrieve_event"
    if not listed:
        ids = raw_event_ids(h, worker.id)
        if not ids:
            h.fail(op, "never called: no event id")
        for event_id, event_type in ids:
            h.call(op, retrieve_event, event_id, expect=200, model=Event, label=event_type)
        return
    one_of_each = {}
    for e in listed:
        one_of_each.setdefault(e.type_.value, e)
    for event_type, e in sorted(one_of_each.items()):
        got = h.call(op, retrieve_event, e.id, expect=200, model=Event, label=event_type)
        raw = h.last_json()
        if got:
            h.check(
                op,
                got.id == e.id and got.type_.value == event_type,
                f"answered {show(got.id)} of type {show(got.type_)}",
                event_type,
            )
            h.check(
                op, got.service_id == worker.id, f"serviceId {show(got.service_id)}", event_type
            )
            details_match(h, op, event_type, raw["details"], event_type)


def raw_event_ids(h, service_id):
    r = h.raw.get(f"/services/{service_id}/events", params={"limit": 100})
    try:
        found = []
        for item in r.json():
            event = item.get("event") or item
            found.append((event["id"], str(event.get("type"))))
        return found[:5]
    except (ValueError, LookupError, AttributeError, TypeError):
        return []

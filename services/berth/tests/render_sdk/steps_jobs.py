"""One-off jobs: `one_off_jobs.*` on the background worker, which runs by
then: a job that checks the service's env (as the env_vars step left it:
GREETING=hi) runs to `succeeded`, a job that
would sleep for ten minutes is canceled, and the listing filters by
status and pages."""

from render.public_api.api.one_off_jobs import cancel_job, list_job, post_job, retrieve_job
from render.public_api.models import Job, JobStatus, JobWithCursor, PostJobBody

from harness import show
from world import raw_id


def jobs(h, w):
    svc = w.services["background_worker"]
    if not svc.id:
        return
    op = "one_off_jobs.post_job"
    body = PostJobBody(start_command="sh -c 'test \"$GREETING\" = hi'")
    job = h.call(op, post_job, svc.id, expect=201, model=Job, body=body)
    ok_id = job.id if job else raw_id(h, "id")
    if job:
        h.check(op, job.service_id == svc.id, f"serviceId {job.service_id!r}, not {svc.id!r}")
        h.check(op, job.start_command == body.start_command, f"startCommand {job.start_command!r}")
    sleeper = h.call(
        op,
        post_job,
        svc.id,
        expect=201,
        model=Job,
        body=PostJobBody(start_command="sleep 600", plan_id="standard"),
    )
    sleep_id = sleeper.id if sleeper else raw_id(h, "id")
    if sleeper:
        h.check(op, sleeper.plan_id == "standard", f"planId {sleeper.plan_id!r}, not standard")
    if not ok_id or not sleep_id:
        return

    op = "one_off_jobs.retrieve_job"

    def ended():
        got = h.call(op, retrieve_job, svc.id, ok_id, expect=200, model=Job)
        if got is None:
            return "failed"  # recorded already
        return got if got.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) else None

    done = h.eventually(60, ended)
    if done != "failed" and h.check(op, done is not None, "the job did not end within 60 s"):
        h.check(
            op,
            done.status == JobStatus.SUCCEEDED,
            f"it ended {show(done.status)}: {h.last_json()}",
        )
        h.check(op, bool(done.started_at) and bool(done.finished_at), "no startedAt/finishedAt")

    op = "one_off_jobs.list_job"
    listed = h.call(op, list_job, svc.id, expect=200, model=JobWithCursor, many=True)
    if listed is not None:
        ids = [i.job.id for i in listed]
        h.check(op, ids[:2] == [sleep_id, ok_id], f"not newest first: {ids}")
    succeeded = h.call(
        op,
        list_job,
        svc.id,
        expect=200,
        model=JobWithCursor,
        many=True,
        label="status succeeded",
        status=[JobStatus.SUCCEEDED],
    )
    if succeeded is not None:
        h.check(op, [i.job.id for i in succeeded] == [ok_id], "status=succeeded filters")
    paged = h.call(
        op,
        list_job,
        svc.id,
        expect=200,
        model=JobWithCursor,
        many=True,
        label="page 2",
        limit=1,
        cursor=sleep_id,
    )
    if paged is not None:
        h.check(op, [i.job.id for i in paged] == [ok_id], "the cursor's next page")

    op = "one_off_jobs.cancel_job"
    canceled = h.call(op, cancel_job, svc.id, sleep_id, expect=200, model=Job)
    if canceled:
        h.check(op, canceled.status == JobStatus.CANCELED, f"status {show(canceled.status)}")

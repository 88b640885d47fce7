"""Services: creating one of each type, their instances and scaling, env
vars, restart/suspend/resume/update, listing with filters; and deleting
all the check made (services, then the credentials they used)."""

import datetime

from render.public_api.api.registry_credentials import (
    delete_registry_credential,
    retrieve_registry_credential,
)
from render.public_api.api.services import (
    add_or_update_secret_file,
    delete_secret_file,
    list_secret_files_for_service,
    retrieve_secret_file,
    update_secret_files_for_service,
    create_service,
    delete_env_var,
    delete_service,
    get_env_vars_for_service,
    list_instances,
    list_services,
    restart_service,
    resume_service,
    retrieve_env_var,
    retrieve_service,
    scale_service,
    suspend_service,
    update_env_var,
    update_env_vars_for_service,
    update_service,
)
from render.public_api.models import (
    AddOrUpdateSecretFileBody,
    BackgroundWorkerDetailsPOST,
    CronJobDetailsPOST,
    DockerDetailsPOST,
    EnvVar,
    EnvVarKeyValue,
    EnvVarValue,
    EnvVarWithCursor,
    SecretFile,
    SecretFileInput,
    SecretFileWithCursor,
    Error,
    Image,
    ListServicesSuspendedItem,
    Plan,
    PrivateServiceDetailsPOST,
    Region,
    ScaleServiceBody,
    Service,
    ServiceAndDeploy,
    ServiceDisk,
    ServiceInstance,
    ServicePATCH,
    ServicePOST,
    ServiceRuntime,
    ServiceServiceSuspendedState,
    ServiceType,
    ServiceWithCursor,
    WebServiceDetailsPOST,
)

from harness import show
from world import (
    CRON_RUN,
    DISK_NAME,
    DISK_PATH,
    HEALTH,
    SCHEDULE,
    SERVER,
    SLEEPER,
    Svc,
    check_service,
    now,
    pages,
    raw_id,
    wait_deploy,
)


# Creating.


def service_body(w, svc):
    """What a Render user sends to create an image-backed `svc`."""
    docker = DockerDetailsPOST(docker_command=svc.command)
    common = dict(
        runtime=ServiceRuntime.IMAGE,
        plan=Plan.STARTER,
        region=Region.OREGON,
        env_specific_details=docker,
    )
    if svc.type_ == ServiceType.CRON_JOB:
        details = CronJobDetailsPOST(schedule=SCHEDULE, **common)
    elif svc.type_ == ServiceType.WEB_SERVICE:
        details = WebServiceDetailsPOST(num_instances=1, health_check_path=HEALTH, **common)
    elif svc.type_ == ServiceType.PRIVATE_SERVICE:
        # With a disk, as a database would have.
        disk = ServiceDisk(name=DISK_NAME, mount_path=DISK_PATH, size_gb=1)
        details = PrivateServiceDetailsPOST(num_instances=1, disk=disk, **common)
    else:
        details = BackgroundWorkerDetailsPOST(num_instances=1, **common)
    image = Image(owner_id=w.owner, image_path=w.image, registry_credential_id=w.credential or "")
    return ServicePOST(
        type_=svc.type_,
        name=svc.name,
        owner_id=w.owner,
        image=image,
        env_vars=[EnvVarKeyValue(key="GREETING", value="hello")],
        secret_files=[SecretFileInput(name="app.conf", content="mode=sdk\n")],
        service_details=details,
    )


def create_services(h, w):
    op = "services.create_service"
    specs = [
        Svc("background_worker", ServiceType.BACKGROUND_WORKER, f"{w.prefix}-worker", SLEEPER),
        Svc("web_service", ServiceType.WEB_SERVICE, f"{w.prefix}-web", SERVER),
        Svc("private_service", ServiceType.PRIVATE_SERVICE, f"{w.prefix}-private", SERVER),
        Svc("cron_job", ServiceType.CRON_JOB, f"{w.prefix}-cron", CRON_RUN),
    ]
    for svc in specs:
        svc.image = w.image
        w.services[svc.kind] = svc
        got = h.call(
            op,
            create_service,
            body=service_body(w, svc),
            expect=201,
            model=ServiceAndDeploy,
            label=svc.kind,
        )
        if got:
            if h.check(op, isinstance(got.service, Service), "no service in the answer", svc.kind):
                svc.id = got.service.id
                check_service(h, op, w, svc, got.service, svc.kind)
            if h.check(op, isinstance(got.deploy_id, str), "no deployId in the answer", svc.kind):
                svc.deploy = got.deploy_id
        elif h.last is not None and h.last.is_success:
            svc.id = raw_id(h, "service", "id") or raw_id(h, "id")
            svc.deploy = raw_id(h, "deployId")
        else:
            svc.id, svc.deploy = fallback_service(h, service_body(w, svc))
        if svc.id and not svc.deploy:
            svc.deploy = newest_deploy_raw(h, svc.id)
        h.log(f"created {svc.kind}: {svc.id} (deploy {svc.deploy})")

    op = "services.retrieve_service"
    for svc in specs:
        if svc.id:
            got = h.call(op, retrieve_service, svc.id, expect=200, model=Service, label=svc.kind)
            if got:
                check_service(h, op, w, svc, got, svc.kind)

    for svc in specs:
        if svc.id and svc.deploy:
            _, status = wait_deploy(h, svc, svc.deploy, f"{svc.kind} initial deploy")
            h.check(
                "services.create_service",
                status == "live",
                f"the initial deploy ended {status or 'never'}, not live",
                svc.kind,
            )


# The fields of serviceDetails that SPEC §14 lists for berth's create body.
SPEC_DETAILS = {
    "region",
    "plan",
    "numInstances",
    "healthCheckPath",
    "preDeployCommand",
    "schedule",
    "envSpecificDetails",
}


def fallback_service(h, body):
    """The service through the API directly, in the create body SPEC §14
    gives, so the operations on it can still run when the SDK's create
    failed. Returns (service id, deploy id)."""
    data = body.to_dict()
    data["serviceDetails"] = {k: v for k, v in data["serviceDetails"].items() if k in SPEC_DETAILS}
    data["image"].pop("ownerId", None)
    r = h.raw.post("/services", json=data)
    if not r.is_success:
        h.log(
            f"could not create {data['name']} without the SDK either: {r.status_code} {r.text[:200]}"
        )
        return None, None
    h.log(f"created {data['name']} without the SDK, to go on")
    got = r.json()
    service = got.get("service") if isinstance(got.get("service"), dict) else got
    return service.get("id"), got.get("deployId")


def newest_deploy_raw(h, service_id):
    r = h.raw.get(f"/services/{service_id}/deploys", params={"limit": 1})
    try:
        first = r.json()[0]
        return (first.get("deploy") or first).get("id")
    except (ValueError, LookupError, AttributeError):
        return None


# Instances and scaling, on the worker.


def instances(h, w):
    svc = w.services["background_worker"]
    if not svc.id:
        return

    def instances_are(n, label):
        """Waits for `n` instances (the last deploy's predecessors may
        still be stopping, a scale-out still starting)."""
        op = "services.list_instances"

        def count():
            got = h.call(
                op,
                list_instances,
                svc.id,
                expect=200,
                model=ServiceInstance,
                many=True,
                label=label,
            )
            if got is None:
                return "failed"  # recorded already
            return got if len(got) == n else None

        got = h.eventually(30, count)
        if got != "failed":
            h.check(op, got is not None, f"never {n} instances", label)
            if got:
                h.check(op, len({i.id for i in got}) == n, "instance ids repeat", label)

    instances_are(1, "1 instance")
    op = "services.scale_service"
    h.call(op, scale_service, svc.id, body=ScaleServiceBody(num_instances=2), expect=202)
    instances_are(2, "scaled to 2")
    h.call(
        "services.retrieve_service",
        retrieve_service,
        svc.id,
        expect=200,
        model=Service,
        label="scaled",
    )
    # Read raw: retrieve_service's own failure says whether the SDK takes it.
    details = (h.last_json() or {}).get("serviceDetails") or {}
    n = details.get("numInstances")
    h.check(op, n == 2, f"numInstances {n!r} after scaling to 2")


# Environment variables, on the worker.


def env_vars(h, w):
    svc = w.services["background_worker"]
    if not svc.id:
        return
    sid = svc.id

    def listed(label, want):
        op = "services.get_env_vars_for_service"
        got = h.call(
            op,
            get_env_vars_for_service,
            sid,
            expect=200,
            model=EnvVarWithCursor,
            many=True,
            label=label,
            limit=100,
        )
        if got is not None:
            pairs = {i.env_var.key: i.env_var.value for i in got if isinstance(i.env_var, EnvVar)}
            h.check(op, pairs == want, f"lists {pairs}, not {want}", label)

    def retrieved(key, value, label):
        op = "services.retrieve_env_var"
        got = h.call(op, retrieve_env_var, sid, key, expect=200, model=EnvVar, label=label)
        if got:
            h.check(op, got.key == key and got.value == value, f"{key} is {show(got.value)}", label)

    listed("as created", {"GREETING": "hello"})

    op = "services.update_env_var"
    got = h.call(
        op, update_env_var, sid, "EXTRA", body=EnvVarValue(value="one"), expect=200, model=EnvVar
    )
    if got:
        h.check(
            op,
            (got.key, got.value) == ("EXTRA", "one"),
            f"answered {show(got.key)}={show(got.value)}",
        )
    retrieved("EXTRA", "one", "set one")
    retrieved("GREETING", "hello", "the others untouched")

    op = "services.update_env_vars_for_service"
    body = [EnvVarKeyValue(key="GREETING", value="hi"), EnvVarKeyValue(key="OTHER", value="two")]
    got = h.call(
        op,
        update_env_vars_for_service,
        sid,
        body=body,
        expect=200,
        model=EnvVarWithCursor,
        many=True,
    )
    if got is not None:
        pairs = {i.env_var.key: i.env_var.value for i in got if isinstance(i.env_var, EnvVar)}
        h.check(
            op,
            pairs == {"GREETING": "hi", "OTHER": "two"},
            f"answered {pairs}: not the list given (it replaces all)",
        )
    listed("replaced", {"GREETING": "hi", "OTHER": "two"})

    op = "services.delete_env_var"
    h.call(op, delete_env_var, sid, "OTHER", expect=204)
    h.call(
        "services.retrieve_env_var",
        retrieve_env_var,
        sid,
        "OTHER",
        expect=404,
        model=Error,
        label="deleted",
    )
    listed("after delete", {"GREETING": "hi"})


def secret_files(h, w):
    svc = w.services["background_worker"]
    if not svc.id:
        return
    sid = svc.id

    def listed(label, want):
        op = "services.list_secret_files_for_service"
        got = h.call(
            op,
            list_secret_files_for_service,
            sid,
            expect=200,
            model=SecretFileWithCursor,
            many=True,
            label=label,
            limit=100,
        )
        if got is not None:
            files = {i.secret_file.name: i.secret_file.content for i in got}
            h.check(op, files == want, f"lists {sorted(files)}, not {sorted(want)}", label)

    listed("as created", {"app.conf": "mode=sdk\n"})
    op = "services.add_or_update_secret_file"
    got = h.call(
        op,
        add_or_update_secret_file,
        sid,
        "key.json",
        body=AddOrUpdateSecretFileBody(content='{"k": 1}'),
        expect=201,
        model=SecretFile,
    )
    if got:
        h.check(op, (got.name, got.content) == ("key.json", '{"k": 1}'), f"answered {show(got.name)}")
    op = "services.retrieve_secret_file"
    got = h.call(op, retrieve_secret_file, sid, "key.json", expect=200, model=SecretFile)
    if got:
        h.check(op, got.content == '{"k": 1}', f"content {show(got.content)}")
    listed("one added", {"app.conf": "mode=sdk\n", "key.json": '{"k": 1}'})

    op = "services.update_secret_files_for_service"
    got = h.call(
        op,
        update_secret_files_for_service,
        sid,
        body=[SecretFileInput(name="only.txt", content="one")],
        expect=200,
        model=SecretFileWithCursor,
        many=True,
    )
    if got is not None:
        names = [i.secret_file.name for i in got]
        h.check(op, names == ["only.txt"], f"answered {names}: not the list given (it replaces all)")
    op = "services.delete_secret_file"
    h.call(op, delete_secret_file, sid, "only.txt", expect=204)
    h.call(
        "services.retrieve_secret_file",
        retrieve_secret_file,
        sid,
        "only.txt",
        expect=404,
        model=Error,
        label="deleted",
    )
    listed("after delete", {})


# Restart, suspend, resume, update.


def lifecycle(h, w):
    worker = w.services["background_worker"]
    web = w.services["web_service"]
    if not worker.id:
        return
    h.call("services.restart_service", restart_service, worker.id, expect=200)

    def state(want, label):
        """Whether the service comes to be `want`; read from the raw answer
        too, so suspend and resume are judged even when the SDK refuses
        the service (retrieve_service's own failure says why)."""

        def probe():
            h.call(
                "services.retrieve_service",
                retrieve_service,
                worker.id,
                expect=200,
                model=Service,
                label=label,
            )
            data = h.last_json()
            return True if isinstance(data, dict) and data.get("suspended") == want.value else None

        return h.eventually(30, probe)

    op = "services.suspend_service"
    h.call(op, suspend_service, worker.id, expect=202)
    h.check(op, state(ServiceServiceSuspendedState.SUSPENDED, "suspended"), "never suspended")
    for value, want, unwanted in (
        (ListServicesSuspendedItem.SUSPENDED, [worker.id], [web.id]),
        (ListServicesSuspendedItem.NOT_SUSPENDED, [web.id], [worker.id]),
    ):
        listed_services(h, w, f"suspended={value.value}", want, unwanted, suspended=[value])
    op = "services.resume_service"
    h.call(op, resume_service, worker.id, expect=202)
    h.check(op, state(ServiceServiceSuspendedState.NOT_SUSPENDED, "resumed"), "never resumed")

    op = "services.update_service"
    renamed = f"{worker.name}-renamed"
    got = h.call(
        op,
        update_service,
        worker.id,
        body=ServicePATCH(name=renamed),
        expect=200,
        model=Service,
        label="name",
    )
    if got:
        check_service(h, op, w, worker, got, "name", name=renamed)
    if h.last is not None and h.last.is_success:
        worker.name = renamed
    private = w.services["private_service"]
    if private.id:
        body = ServicePATCH(
            image=Image(
                owner_id=w.owner, image_path=w.image2, registry_credential_id=w.credential or ""
            )
        )
        got = h.call(
            op, update_service, private.id, body=body, expect=200, model=Service, label="image"
        )
        if got:
            check_service(h, op, w, private, got, "image", image=w.image2)
        if h.last is not None and h.last.is_success:
            private.image = w.image2


# Listing services.


def listed_services(h, w, label, want, unwanted=(), **filters):
    op = "services.list_services"
    got = h.call(
        op,
        list_services,
        expect=200,
        model=ServiceWithCursor,
        many=True,
        label=label,
        limit=100,
        **filters,
    )
    if got is None:
        return None
    seen = {i.service.id for i in got}
    h.check(op, set(filter(None, want)) <= seen, "does not list every matching service", label)
    h.check(
        op, not (set(filter(None, unwanted)) & seen), "lists services the filter excludes", label
    )
    h.check(op, all(isinstance(i.cursor, str) for i in got), "items without a cursor", label)
    return got


def list_all(h, w):
    services = list(w.services.values())
    ids = [s.id for s in services]
    by = {s.kind: s.id for s in services}
    got = listed_services(h, w, "no filter", ids)
    if got:
        for item in got:
            svc = next((s for s in services if s.id == item.service.id), None)
            if svc:
                check_service(h, "services.list_services", w, svc, item.service, "no filter")
    listed_services(
        h,
        w,
        "type",
        [by["web_service"]],
        [by["background_worker"], by["cron_job"]],
        type_=[ServiceType.WEB_SERVICE],
    )
    listed_services(
        h,
        w,
        "types",
        [by["background_worker"], by["cron_job"]],
        [by["web_service"], by["private_service"]],
        type_=[ServiceType.BACKGROUND_WORKER, ServiceType.CRON_JOB],
    )
    web = w.services["web_service"]
    listed_services(h, w, "name", [web.id], [i for i in ids if i != web.id], name=[web.name])
    listed_services(h, w, "includePreviews=false", ids, include_previews=False)
    listed_services(h, w, "ownerId", ids, owner_id=[w.owner])
    listed_services(h, w, "env=image", ids, env=[ServiceRuntime.IMAGE])
    listed_services(h, w, "region", ids, region=[Region.OREGON])
    listed_services(h, w, "createdBefore", ids, created_before=now() + datetime.timedelta(hours=1))
    listed_services(
        h, w, "createdAfter", [], ids, created_after=now() + datetime.timedelta(hours=1)
    )
    pages(
        h,
        "services.list_services",
        lambda **kw: list_services.sync_detailed(client=h.client, **kw),
        lambda i: i.service.id,
        min_items=4,
    )


# Deleting.


def teardown(h, w):
    op = "services.delete_service"
    for svc in w.services.values():
        if not svc.id:
            continue
        h.call(op, delete_service, svc.id, expect=204, label=svc.kind)
        h.call(
            "services.retrieve_service",
            retrieve_service,
            svc.id,
            expect=404,
            model=Error,
            label="deleted",
        )

    op = "registry_credentials.delete_registry_credential"
    for cred, label in (
        (w.spare_credential, "unused"),
        (w.credential, "after its services are deleted"),
    ):
        if not cred:
            h.fail(op, "never called: no credential", label)
            continue
        h.call(op, delete_registry_credential, cred, expect=204, label=label)
        h.call(
            "registry_credentials.retrieve_registry_credential",
            retrieve_registry_credential,
            cred,
            expect=404,
            model=Error,
            label="deleted",
        )

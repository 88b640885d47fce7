"""The web service's instance settings through Render's SDK: autoscaling set
(its count moves into the range), shown with the service, then removed (the
count stays) and the service scaled back by hand; maintenance mode turned on
with a page of its own, shown, and off again (the page kept); an IP allow
list set (every client) and shown as the router reads it."""

from render.public_api.api.services import (
    autoscale_service,
    delete_autoscaling_config,
    retrieve_service,
    scale_service,
    update_service,
)
from render.public_api.models import (
    AutoscalingConfig,
    AutoscalingCriteria,
    AutoscalingCriteriaPercentage,
    CidrBlockAndDescription,
    MaintenanceMode,
    ScaleServiceBody,
    Service,
    ServicePATCH,
    WebServiceDetailsPATCH,
)


def autoscaling(h, w):
    web = w.services["web_service"]
    if not web.id:
        return
    op = "services.autoscale_service"
    body = AutoscalingConfig(
        enabled=True,
        min_=2,
        max_=3,
        criteria=AutoscalingCriteria(
            cpu=AutoscalingCriteriaPercentage(enabled=True, percentage=70),
            memory=AutoscalingCriteriaPercentage(enabled=False, percentage=80),
        ),
    )
    got = h.call(op, autoscale_service, web.id, body=body, expect=200, model=AutoscalingConfig)
    if got:
        h.check(
            op,
            (got.enabled, got.min_, got.max_, got.criteria.cpu.percentage) == (True, 2, 3, 70),
            f"answered {got.to_dict()}",
        )

    def details(label):
        h.call(
            "services.retrieve_service",
            retrieve_service,
            web.id,
            expect=200,
            model=Service,
            label=label,
        )
        # Read raw: retrieve_service's own failure says whether the SDK takes it.
        return (h.last_json() or {}).get("serviceDetails") or {}

    d = details("autoscaled")
    h.check(op, (d.get("autoscaling") or {}).get("max") == 3, f"serviceDetails {d}")
    h.check(op, d.get("numInstances") == 2, f"numInstances {d.get('numInstances')!r}, not 2")

    op = "services.delete_autoscaling_config"
    h.call(op, delete_autoscaling_config, web.id, expect=204)
    d = details("autoscaling removed")
    h.check(op, "autoscaling" not in d, f"serviceDetails still has {d.get('autoscaling')}")
    h.check(op, d.get("numInstances") == 2, f"numInstances {d.get('numInstances')!r} moved")
    h.call(
        "services.scale_service",
        scale_service,
        web.id,
        body=ScaleServiceBody(num_instances=1),
        expect=202,
    )


def maintenance(h, w):
    web = w.services["web_service"]
    if not web.id:
        return
    op = "services.update_service"
    page = "https://status.example.com/"
    for enabled, label in ((True, "maintenance on"), (False, "maintenance off")):
        body = ServicePATCH(
            service_details=WebServiceDetailsPATCH(
                maintenance_mode=MaintenanceMode(enabled=enabled, uri=page)
            )
        )
        got = h.call(op, update_service, web.id, body=body, expect=200, model=Service, label=label)
        mode = ((h.last_json() or {}).get("serviceDetails") or {}).get("maintenanceMode")
        h.check(
            op,
            mode == {"enabled": enabled, "uri": page},
            f"serviceDetails.maintenanceMode {mode!r} after {label}",
            label,
        )
        if got:
            parsed = got.service_details.maintenance_mode
            h.check(op, parsed.enabled == enabled, f"the SDK read {parsed!r}", label)


def ip_allow_list(h, w):
    web = w.services["web_service"]
    if not web.id:
        return
    op = "services.update_service"
    body = ServicePATCH(
        service_details=WebServiceDetailsPATCH(
            ip_allow_list=[
                CidrBlockAndDescription(cidr_block="0.0.0.0/0", description="every IPv4 client"),
                CidrBlockAndDescription(cidr_block="::/0", description="every IPv6 client"),
            ]
        )
    )
    label = "ip allow list"
    got = h.call(op, update_service, web.id, body=body, expect=200, model=Service, label=label)
    listed = ((h.last_json() or {}).get("serviceDetails") or {}).get("ipAllowList")
    want = [
        {"cidrBlock": "0.0.0.0/0", "description": "every IPv4 client"},
        {"cidrBlock": "::/0", "description": "every IPv6 client"},
    ]
    h.check(op, listed == want, f"serviceDetails.ipAllowList {listed!r}, not {want!r}", label)
    if got:
        parsed = [b.cidr_block for b in got.service_details.ip_allow_list]
        h.check(op, parsed == ["0.0.0.0/0", "::/0"], f"the SDK read {parsed!r}", label)

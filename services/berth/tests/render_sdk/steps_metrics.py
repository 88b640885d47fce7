"""A service's metrics through Render's SDK: CPU, memory and their limits
per instance, the instance count, requests and latency (the web service),
and the disk's use and size (the private service, which has one). Samples
come from the node every few seconds: each series is waited for. Each
answer must parse as Render's `TimeSeries` list, name the service it was
asked for, and hold what the service has (its limits are the plan's)."""

from render.public_api.api.metrics import (
    list_application_filter_values,
    list_http_filter_values,
    get_cpu,
    get_cpu_limit,
    get_disk_capacity,
    get_disk_usage,
    get_http_latency,
    get_http_requests,
    get_instance_count,
    get_memory,
    get_memory_limit,
)
from render.public_api.models import FilterApplicationValuesCollectionItem, TimeSeries
from render.public_api.models.filter_http_values_collection_item import (
    FilterHTTPValuesCollectionItem,
)


def metrics(h, w):
    web = w.services["web_service"]
    private = w.services["private_service"]
    if not web.id:
        return

    def series(function, svc, **kwargs):
        """The series once one has a point (waiting up to a minute)."""

        def probe():
            got = function.sync_detailed(client=h.client, resource=svc.id, **kwargs).parsed
            has = isinstance(got, list) and any(s.values for s in got)
            return got if has else None

        return h.eventually(60, probe, every=1)

    for op, function, unit, svc in (
        ("metrics.get_cpu", get_cpu, "cpu", web),
        ("metrics.get_memory", get_memory, "bytes", web),
        ("metrics.get_cpu_limit", get_cpu_limit, "cpu", web),
        ("metrics.get_memory_limit", get_memory_limit, "bytes", web),
        ("metrics.get_instance_count", get_instance_count, "count", web),
        ("metrics.get_disk_usage", get_disk_usage, "bytes", private),
        ("metrics.get_disk_capacity", get_disk_capacity, "bytes", private),
    ):
        if not svc.id:
            continue
        series(function, svc)
        got = h.call(op, function, resource=svc.id, expect=200, model=TimeSeries, many=True)
        if got is None:
            continue
        if not got:
            h.fail(op, "no series, after a minute of samples")
            continue
        for s in got:
            labels = {l.field: l.value for l in s.labels}
            h.check(op, labels.get("resource") == svc.id, f"labels {labels}")
            h.check(op, s.unit == unit, f"unit {s.unit!r}, not {unit!r}")
        values = [v.value for s in got for v in s.values]
        h.check(op, values and all(v >= 0 for v in values), f"values {values[:5]}")
        if op == "metrics.get_cpu_limit":
            h.check(op, all(0 < v <= 64 for v in values), f"CPU limits {values[:5]} are no plan's")
        if op == "metrics.get_memory_limit":
            h.check(op, all(v >= 64 * 2**20 for v in values), f"limits {values[:5]} below any plan")
        if op == "metrics.get_disk_capacity":
            h.check(op, all(v > 0.5e9 for v in values), f"a 1 GB disk's size read {values[:3]}")

    # Requests through the router: the check makes none, so the series
    # may be empty; they must still parse and filter.
    for op, function, kwargs in (
        ("metrics.get_http_requests", get_http_requests, {}),
        ("metrics.get_http_latency", get_http_latency, {"quantile": 0.99}),
    ):
        got = h.call(op, function, resource=web.id, expect=200, model=TimeSeries, many=True, **kwargs)
        if got:
            h.check(
                op,
                all({l.field: l.value for l in s.labels}.get("resource") == web.id for s in got),
                "a series of another service",
            )

    # What the series may be filtered by: the instances that reported (the
    # CPU series' own), and the status classes (none: no requests made).
    op = "metrics.list_application_filter_values"
    got = h.call(
        op,
        list_application_filter_values,
        resource=web.id,
        expect=200,
        model=FilterApplicationValuesCollectionItem,
        many=True,
    )
    if got:
        named = {v for f in got if f.filter_.value == "instance" for v in f.values}
        cpu = get_cpu.sync_detailed(client=h.client, resource=web.id).parsed or []
        reported = {l.value for s in cpu for l in s.labels if l.field == "instance"}
        h.check(op, reported and reported <= named, f"instances {sorted(named)}, CPU series of {sorted(reported)}")
    op = "metrics.list_http_filter_values"
    got = h.call(
        op,
        list_http_filter_values,
        resource=web.id,
        expect=200,
        model=FilterHTTPValuesCollectionItem,
        many=True,
    )
    if got:
        h.check(op, all(f.filter_.value == "statusCode" for f in got), f"filters {[f.to_dict() for f in got]}")


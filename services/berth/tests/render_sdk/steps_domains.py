"""Custom domains of the web service: add a subdomain and an apex (one
domain each, as berth adds no www/apex pair), list with filters, retrieve
by id and by name, ask for verification, refuse a name taken, delete."""

from render.public_api.api.custom_domains import (
    create_custom_domain,
    delete_custom_domain,
    list_custom_domains,
    refresh_custom_domain,
    retrieve_custom_domain,
)
from render.public_api.models import (
    CreateCustomDomainBody,
    CustomDomain,
    CustomDomainDomainType,
    CustomDomainVerificationStatus,
    CustomDomainWithCursor,
    Error,
    ListCustomDomainsDomainType,
)

from harness import show


def check_domain(h, op, w, got, name, kind, label):
    """What Render would say of custom domain `name` of the web service."""
    web = w.services["web_service"]
    h.check(op, got.name == name, f"name {show(got.name)}, not {name!r}", label)
    h.check(op, got.domain_type == kind, f"domainType {show(got.domain_type)}", label)
    h.check(
        op,
        got.verification_status == CustomDomainVerificationStatus.UNVERIFIED,
        f"verificationStatus {show(got.verification_status)} before any certificate",
        label,
    )
    h.check(op, got.id.startswith("cdm-"), f"id {show(got.id)}", label)
    server = got.server
    h.check(
        op,
        not isinstance(server, type(None)) and getattr(server, "id", None) == web.id,
        f"server {show(server)}, not the web service",
        label,
    )


def custom_domains(h, w):
    web = w.services["web_service"]
    if not web.id:
        return
    sid = web.id
    sub, apex = f"www.{w.prefix}-site.com", f"{w.prefix}-site.com"

    op = "custom_domains.create_custom_domain"
    added = {}
    for name, kind in ((sub, CustomDomainDomainType.SUBDOMAIN), (apex, CustomDomainDomainType.APEX)):
        got = h.call(
            op,
            create_custom_domain,
            sid,
            body=CreateCustomDomainBody(name=name),
            expect=201,
            model=CustomDomain,
            many=True,
            label=name,
        )
        if got is None:
            continue
        if h.check(op, len(got) == 1, f"created {len(got)} domains for {name}, not 1", name):
            check_domain(h, op, w, got[0], name, kind, name)
            added[name] = got[0].id
    h.call(
        op,
        create_custom_domain,
        sid,
        body=CreateCustomDomainBody(name=sub),
        expect=409,
        model=Error,
        label="taken",
    )

    op = "custom_domains.list_custom_domains"
    for label, want, filters in (
        ("all", {sub, apex}, {}),
        ("domainType", {apex}, {"domain_type": ListCustomDomainsDomainType.APEX}),
        ("name", {sub}, {"name": [sub]}),
    ):
        got = h.call(
            op,
            list_custom_domains,
            sid,
            expect=200,
            model=CustomDomainWithCursor,
            many=True,
            label=label,
            **filters,
        )
        if got is not None:
            names = {i.custom_domain.name for i in got}
            h.check(op, names == want, f"lists {sorted(names)}, not {sorted(want)}", label)

    op = "custom_domains.retrieve_custom_domain"
    if sub in added:
        for key, label in ((added[sub], "by id"), (sub, "by name")):
            got = h.call(
                op, retrieve_custom_domain, sid, key, expect=200, model=CustomDomain, label=label
            )
            if got is not None:
                check_domain(h, op, w, got, sub, CustomDomainDomainType.SUBDOMAIN, label)

    op = "custom_domains.refresh_custom_domain"
    h.call(op, refresh_custom_domain, sid, sub, expect=202)

    op = "custom_domains.delete_custom_domain"
    for name in (sub, apex):
        h.call(op, delete_custom_domain, sid, name, expect=204, label=name)
    h.call(
        "custom_domains.retrieve_custom_domain",
        retrieve_custom_domain,
        sid,
        sub,
        expect=404,
        model=Error,
        label="deleted",
    )

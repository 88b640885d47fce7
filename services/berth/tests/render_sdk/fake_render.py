"""A small in-memory stand-in for Render's API, answering as Render's
contract says (the shapes the SDK's models require), for `check.py
--self-test`: the check must pass against it, so a check that fails berth
fails it for what berth answers, not for a mistake of the check's own.

Deploys go live (or end canceled) at the first look after they start, so
the self-test needs no waiting; everything else is kept as simple as the
check allows.
"""

import base64
import datetime
import itertools
import json
import os
import re

import httpx
from standardwebhooks.webhooks import Webhook as Signer

_ids = itertools.count(1)


def new_id(prefix):
    return f"{prefix}-{next(_ids):020d}"


def stamp():
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(value):
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


class FakeRender:
    def __init__(self, owner, digests):
        self.owner = owner
        self.digests = digests  # image reference -> digest
        self.credentials = {}
        self.services = {}
        self.snapshots = {}
        self.deploys = {}  # service id -> [deploy], oldest first
        self.events = []  # oldest first
        self.env = {}  # service id -> {key: value}
        self.files = {}  # service id -> {name: content}
        self.overrides = {}  # service id -> notificationsToSend
        self.notify = "failure"
        self.runs = {}  # service id -> the active run
        self.domains = {}  # name -> (service id, custom domain)
        self.jobs = {}  # service id -> [job], oldest first
        self.webhooks = {}  # id -> webhook
        self.sends = {}  # webhook id -> [webhookEvent], oldest first

    # The transport.

    def handle(self, request):
        path = request.url.path.removeprefix("/v1")
        body = json.loads(request.content) if request.content else None
        for method, pattern, handler in self.routes():
            match = re.fullmatch(pattern, path)
            if match and request.method == method:
                status, payload = handler(request.url.params, body, *match.groups())
                if payload is None:
                    return httpx.Response(status)
                return httpx.Response(status, json=payload)
        return httpx.Response(404, json={"id": "not_found", "message": "route not found"})

    def routes(self):
        s = r"/services/([^/]+)"
        return [
            ("POST", r"/registrycredentials", self.create_credential),
            ("GET", r"/registrycredentials", self.list_credentials),
            ("GET", r"/registrycredentials/([^/]+)", self.get_credential),
            ("PATCH", r"/registrycredentials/([^/]+)", self.update_credential),
            ("DELETE", r"/registrycredentials/([^/]+)", self.delete_credential),
            ("POST", r"/services", self.create_service),
            ("GET", r"/services", self.list_services),
            ("GET", s, self.get_service),
            ("PATCH", s, self.update_service),
            ("DELETE", s, self.delete_service),
            ("GET", s + r"/deploys", self.list_deploys),
            ("POST", s + r"/deploys", self.create_deploy),
            ("GET", s + r"/deploys/([^/]+)", self.get_deploy),
            ("POST", s + r"/deploys/([^/]+)/cancel", self.cancel_deploy),
            ("POST", s + r"/rollback", self.rollback),
            ("GET", s + r"/events", self.list_events),
            ("GET", r"/events/([^/]+)", self.get_event),
            ("GET", s + r"/instances", self.instances),
            ("POST", s + r"/scale", self.scale),
            ("PUT", s + r"/autoscaling", self.autoscale),
            ("DELETE", s + r"/autoscaling", self.delete_autoscaling),
            ("POST", s + r"/restart", lambda q, b, sid: self.known(sid) or (200, None)),
            ("POST", s + r"/suspend", lambda q, b, sid: self.suspend(sid, True)),
            ("POST", s + r"/resume", lambda q, b, sid: self.suspend(sid, False)),
            ("GET", s + r"/env-vars", self.list_env),
            ("PUT", s + r"/env-vars", self.replace_env),
            ("GET", s + r"/env-vars/([^/]+)", self.get_env),
            ("PUT", s + r"/env-vars/([^/]+)", self.put_env),
            ("DELETE", s + r"/env-vars/([^/]+)", self.delete_env),
            ("GET", s + r"/secret-files", self.list_files),
            ("PUT", s + r"/secret-files", self.replace_files),
            ("GET", s + r"/secret-files/([^/]+)", self.get_file),
            ("PUT", s + r"/secret-files/([^/]+)", self.put_file),
            ("DELETE", s + r"/secret-files/([^/]+)", self.delete_file),
            ("GET", r"/notification-settings/owners/([^/]+)", self.get_notify),
            ("PATCH", r"/notification-settings/owners/([^/]+)", self.patch_notify),
            ("GET", r"/notification-settings/overrides", self.list_overrides),
            ("GET", r"/notification-settings/overrides/services/([^/]+)", self.get_override),
            ("PATCH", r"/notification-settings/overrides/services/([^/]+)", self.patch_override),
            ("POST", s + r"/custom-domains", self.add_domain),
            ("GET", s + r"/custom-domains", self.list_domains),
            ("GET", s + r"/custom-domains/([^/]+)", self.get_domain),
            ("DELETE", s + r"/custom-domains/([^/]+)", self.delete_domain),
            ("POST", s + r"/custom-domains/([^/]+)/verify", self.verify_domain),
            ("GET", r"/disks", self.list_disks),
            ("GET", r"/disks/([^/]+)", self.get_disk),
            ("PATCH", r"/disks/([^/]+)", self.patch_disk),
            ("POST", r"/disks", self.add_disk),
            ("DELETE", r"/disks/([^/]+)", self.delete_disk),
            ("GET", r"/disks/([^/]+)/snapshots", self.list_snapshots),
            ("POST", r"/disks/([^/]+)/snapshots", self.take_snapshot),
            ("POST", r"/disks/([^/]+)/snapshots/restore", self.restore_snapshot),
            ("POST", r"/cron-jobs/([^/]+)/runs", self.run_cron),
            ("DELETE", r"/cron-jobs/([^/]+)/runs", self.cancel_cron),
            ("POST", s + r"/jobs", self.create_job),
            ("GET", s + r"/jobs", self.list_jobs),
            ("GET", s + r"/jobs/([^/]+)", self.get_job),
            ("POST", s + r"/jobs/([^/]+)/cancel", self.cancel_job),
            ("GET", r"/metrics/filters/application", lambda q, b: self.filters(q, "instance", ["srv-instance-1"])),
            ("GET", r"/metrics/filters/http", lambda q, b: self.filters(q, "statusCode", [])),
            ("GET", r"/metrics/([a-z-]+)", self.metric),
            ("GET", r"/owners", self.list_owners),
            ("GET", r"/owners/([^/]+)", self.get_owner),
            ("GET", r"/users", lambda q, b: (200, {"id": self.owner, "email": "", "name": "self-test"})),
            ("POST", r"/webhooks", self.create_webhook),
            ("GET", r"/webhooks", self.list_webhooks),
            ("GET", r"/webhooks/([^/]+)", self.get_webhook),
            ("PATCH", r"/webhooks/([^/]+)", self.patch_webhook),
            ("DELETE", r"/webhooks/([^/]+)", self.delete_webhook),
            ("GET", r"/webhooks/([^/]+)/events", self.list_sends),
        ]

    @staticmethod
    def missing(what):
        return 404, {"id": "not_found", "message": f"{what} not found"}

    def known(self, sid):
        """None when the service exists, else the 404 answer."""
        return None if sid in self.services else self.missing("service")

    @staticmethod
    def page(query, items, key):
        """Cursor paging: items after the one whose key is `cursor`."""
        cursor = query.get("cursor")
        if cursor:
            keys = [key(i) for i in items]
            items = items[keys.index(cursor) + 1 :] if cursor in keys else []
        return items[: int(query.get("limit", 20))]

    # Disks: those services were created with.

    def disks(self):
        out = []
        for sid, svc in self.services.items():
            d = svc["serviceDetails"].get("disk")
            if d:
                out.append(
                    {
                        **d,
                        "serviceId": sid,
                        "createdAt": svc["createdAt"],
                        "updatedAt": d.get("updatedAt", svc["createdAt"]),
                    }
                )
        return out

    def list_disks(self, query, body):
        items = [
            d
            for d in self.disks()
            if all(
                not query.get_list(k) or d[f] in query.get_list(k)
                for k, f in (("name", "name"), ("diskId", "id"), ("serviceId", "serviceId"))
            )
        ]
        return 200, [{"disk": d, "cursor": d["id"]} for d in self.page(query, items, lambda d: d["id"])]

    def get_disk(self, query, body, did):
        d = next((d for d in self.disks() if d["id"] == did), None)
        return (200, d) if d else self.missing("disk")

    def patch_disk(self, query, body, did):
        for svc in self.services.values():
            d = svc["serviceDetails"].get("disk")
            if d and d["id"] == did:
                if body.get("sizeGB", d["sizeGB"]) < d["sizeGB"]:
                    return 400, {"id": "invalid", "message": "sizeGB: a disk only grows"}
                for k in ("name", "sizeGB", "mountPath"):
                    if k in body:
                        d[k] = body[k]
                d["updatedAt"] = stamp()
                return self.get_disk(query, None, did)
        return self.missing("disk")

    def add_disk(self, query, body, *_):
        svc = self.services.get(body.get("serviceId"))
        if svc is None:
            return self.missing("service")
        d = svc["serviceDetails"]
        if d.get("disk") or svc["type"] == "cron_job" or d.get("numInstances", 1) != 1:
            return 400, {"id": "invalid", "message": "serviceId: this service cannot take a disk"}
        d["disk"] = {
            "id": new_id("dsk"),
            "name": body["name"],
            "mountPath": body["mountPath"],
            "sizeGB": body.get("sizeGB", 1),
        }
        return 201, self.get_disk(query, None, d["disk"]["id"])[1]

    def delete_disk(self, query, body, did):
        for svc in self.services.values():
            d = svc["serviceDetails"].get("disk")
            if d and d["id"] == did:
                del svc["serviceDetails"]["disk"]
                return 204, None
        return self.missing("disk")

    def list_snapshots(self, query, body, did):
        if not self.get_disk(query, None, did)[0] == 200:
            return self.missing("disk")
        return 201, list(reversed(self.snapshots.get(did, [])))

    def take_snapshot(self, query, body, did):
        """berth's own: Render takes them on its own, daily."""
        if not self.get_disk(query, None, did)[0] == 200:
            return self.missing("disk")
        self.snapshots.setdefault(did, []).append(
            {"snapshotKey": new_id("snp"), "createdAt": stamp()}
        )
        return 202, None

    def restore_snapshot(self, query, body, did):
        found, disk = self.get_disk(query, None, did)
        if found != 200:
            return found, disk
        keys = [s["snapshotKey"] for s in self.snapshots.get(did, [])]
        if body.get("snapshotKey") not in keys:
            return self.missing("snapshot")
        return 200, disk

    # Custom domains (one per request: the pair Render may add is left out).

    def add_domain(self, query, body, sid):
        if sid not in self.services:
            return self.missing("service")
        name = body["name"].lower()
        if name in self.domains:
            return 409, {"id": "conflict", "message": f"{name} is in use"}
        domain = {
            "id": new_id("cdm"),
            "name": name,
            "domainType": "apex" if name.count(".") == 1 else "subdomain",
            "publicSuffix": name.rsplit(".", 1)[-1],
            "redirectForName": "",
            "verificationStatus": "unverified",
            "createdAt": stamp(),
            "server": {"id": sid, "name": self.services[sid]["name"]},
        }
        self.domains[name] = (sid, domain)
        return 201, [domain]

    def find_domain(self, sid, key):
        for name, (owner, d) in self.domains.items():
            if owner == sid and key in (name, d["id"]):
                return d
        return None

    def list_domains(self, query, body, sid):
        found = [
            d
            for owner, d in self.domains.values()
            if owner == sid
            and (not query.get_list("name") or d["name"] in query.get_list("name"))
            and (not query.get("domainType") or d["domainType"] == query.get("domainType"))
        ]
        return 200, [{"customDomain": d, "cursor": d["id"]} for d in found]

    def get_domain(self, query, body, sid, key):
        d = self.find_domain(sid, key)
        return (200, d) if d else self.missing("custom domain")

    def delete_domain(self, query, body, sid, key):
        d = self.find_domain(sid, key)
        if not d:
            return self.missing("custom domain")
        del self.domains[d["name"]]
        return 204, None

    def verify_domain(self, query, body, sid, key):
        return (202, None) if self.find_domain(sid, key) else self.missing("custom domain")

    # Registry credentials.

    def create_credential(self, query, body):
        cred = {
            "id": new_id("rgc"),
            "name": body["name"],
            "registry": body["registry"],
            "username": body["username"],
            "updatedAt": stamp(),
        }
        self.credentials[cred["id"]] = cred
        return 200, cred

    def list_credentials(self, query, body):
        found = [
            c
            for c in self.credentials.values()
            if (not query.get_list("name") or c["name"] in query.get_list("name"))
            and (not query.get_list("username") or c["username"] in query.get_list("username"))
            and (not query.get_list("type") or c["registry"] in query.get_list("type"))
            and (not query.get_list("ownerId") or self.owner in query.get_list("ownerId"))
        ]
        return 200, found[: int(query.get("limit", 20))]

    def get_credential(self, query, body, cid):
        cred = self.credentials.get(cid)
        return (200, cred) if cred else self.missing("registry credential")

    def update_credential(self, query, body, cid):
        cred = self.credentials.get(cid)
        if not cred:
            return self.missing("registry credential")
        cred.update(name=body["name"], username=body["username"], updatedAt=stamp())
        return 200, cred

    def delete_credential(self, query, body, cid):
        if cid not in self.credentials:
            return self.missing("registry credential")
        del self.credentials[cid]
        return 204, None

    # Services.

    def create_service(self, query, body):
        sid = new_id("srv")
        d = body.get("serviceDetails", {})
        kind = body["type"]
        details = {
            "env": "image",
            "runtime": "image",
            "envSpecificDetails": {
                "dockerCommand": d.get("envSpecificDetails", {}).get("dockerCommand", ""),
                "dockerContext": "",
                "dockerfilePath": "",
            },
            "plan": d.get("plan", "starter"),
            "region": d.get("region", "oregon"),
            "buildPlan": "starter",
        }
        if kind == "cron_job":
            details["schedule"] = d["schedule"]
        else:
            details["numInstances"] = d.get("numInstances", 1)
        if kind in ("web_service", "private_service"):
            details.update(
                openPorts=[{"port": 10000, "protocol": "TCP"}], url=f"http://{body['name']}"
            )
        if kind == "web_service":
            details["healthCheckPath"] = d.get("healthCheckPath", "")
        if "disk" in d:
            disk = d["disk"]
            details["disk"] = {
                "id": new_id("dsk"),
                "name": disk["name"],
                "mountPath": disk["mountPath"],
                "sizeGB": disk.get("sizeGB", 1),
            }
        image = body["image"]
        cred = self.credentials.get(image.get("registryCredentialId"))
        service = {
            "id": sid,
            "autoDeploy": "no",
            "createdAt": stamp(),
            "dashboardUrl": f"https://dashboard.example/{sid}",
            "name": body["name"],
            "notifyOnFail": "default",
            "ownerId": body["ownerId"],
            "rootDir": "",
            "slug": body["name"],
            "suspended": "not_suspended",
            "suspenders": [],
            "type": kind,
            "updatedAt": stamp(),
            "serviceDetails": details,
            "imagePath": image["imagePath"],
        }
        if cred:
            service["registryCredential"] = {"id": cred["id"], "name": cred["name"]}
        self.services[sid] = service
        self.deploys[sid] = []
        self.env[sid] = {e["key"]: e["value"] for e in body.get("envVars", [])}
        self.files[sid] = {f["name"]: f["content"] for f in body.get("secretFiles", [])}
        self.overrides[sid] = "default"
        deploy = self.start_deploy(sid, image["imagePath"], "api")
        return 201, {"service": service, "deployId": deploy["id"]}

    def list_services(self, query, body):
        def wanted(s):
            details = s["serviceDetails"]
            return (
                (not query.get_list("name") or s["name"] in query.get_list("name"))
                and (not query.get_list("type") or s["type"] in query.get_list("type"))
                and (
                    not query.get_list("suspended") or s["suspended"] in query.get_list("suspended")
                )
                and (not query.get_list("ownerId") or s["ownerId"] in query.get_list("ownerId"))
                and (not query.get_list("env") or details["runtime"] in query.get_list("env"))
                and (not query.get_list("region") or details["region"] in query.get_list("region"))
                and (
                    "createdBefore" not in query
                    or parse_time(s["createdAt"]) < parse_time(query["createdBefore"])
                )
                and (
                    "createdAfter" not in query
                    or parse_time(s["createdAt"]) > parse_time(query["createdAfter"])
                )
            )

        found = [{"service": s, "cursor": s["id"]} for s in self.services.values() if wanted(s)]
        return 200, self.page(query, found, lambda i: i["cursor"])

    def get_service(self, query, body, sid):
        return self.known(sid) or (200, self.services[sid])

    def update_service(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        service = self.services[sid]
        if "name" in body:
            service["name"] = body["name"]
        if "image" in body:
            service["imagePath"] = body["image"]["imagePath"]
        allow = (body.get("serviceDetails") or {}).get("ipAllowList")
        if allow is not None:
            if service["type"] != "web_service":
                return 400, {"id": "invalid", "message": "only web services"}

            def block(b):
                cidr = b["cidrBlock"]
                if "/" not in cidr:
                    cidr += "/128" if ":" in cidr else "/32"
                return {"cidrBlock": cidr, "description": b.get("description", "")}

            service["serviceDetails"]["ipAllowList"] = [block(b) for b in allow]
        mode = (body.get("serviceDetails") or {}).get("maintenanceMode")
        if mode is not None:
            if service["type"] != "web_service":
                return 400, {"id": "invalid", "message": "only web services"}
            before = service["serviceDetails"].get("maintenanceMode") or {"enabled": False, "uri": ""}
            if mode.get("uri", "") != before["uri"]:
                self.event(sid, "maintenance_mode_uri_updated",
                           {"fromUri": before["uri"], "toUri": mode.get("uri", "")})
            if mode["enabled"] != before["enabled"]:
                self.event(sid, "maintenance_mode_enabled", {"enabled": mode["enabled"]})
            service["serviceDetails"]["maintenanceMode"] = {"enabled": mode["enabled"], "uri": mode.get("uri", "")}
        return 200, service

    def delete_service(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        del self.services[sid]
        return 204, None

    # Deploys.

    def event(self, sid, kind, details):
        event = {
            "id": new_id("evt"),
            "timestamp": stamp(),
            "serviceId": sid,
            "type": kind,
            "details": details,
        }
        self.events.append(event)
        self.post_to_webhooks(event)

    # Webhooks: each event posted, signed, at once.

    def post_to_webhooks(self, event):
        for hook in self.webhooks.values():
            if not hook["enabled"] or (hook["eventFilter"] and event["type"] not in hook["eventFilter"]):
                continue
            name = self.services.get(event["serviceId"], {}).get("name", "")
            body = json.dumps(
                {
                    "type": event["type"],
                    "timestamp": event["timestamp"],
                    "data": {"id": event["id"], "serviceId": event["serviceId"], "serviceName": name},
                }
            )
            msg_id, at = new_id("whe"), datetime.datetime.now(datetime.timezone.utc)
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": Signer(hook["secret"]).sign(msg_id, at, body),
            }
            answer = httpx.post(hook["url"], content=body, headers=headers, timeout=5)
            self.sends[hook["id"]].append(
                {
                    "id": msg_id,
                    "eventId": event["id"],
                    "eventType": event["type"],
                    "sentAt": stamp(),
                    "statusCode": answer.status_code,
                    "responseBody": answer.text,
                }
            )

    # Metrics: one point per instance of each series; no requests.

    SERIES = {
        "cpu": ("cpu", 0.1),
        "memory": ("bytes", 50e6),
        "cpu-limit": ("cpu", 0.5),
        "memory-limit": ("bytes", 512 * 2**20),
        "instance-count": ("count", 1),
        "disk-usage": ("bytes", 1e6),
        "disk-capacity": ("bytes", 1e9),
    }

    def filters(self, query, name, values):
        if query.get("resource") not in self.services:
            return self.missing("service")
        return 200, [{"filter": name, "values": values}]

    def metric(self, query, body, kind):
        rid = query.get("resource")
        if rid not in self.services:
            return self.missing("service")
        if kind not in self.SERIES:
            return 200, []
        unit, value = self.SERIES[kind]
        labels = [{"field": "resource", "value": rid}]
        if kind != "instance-count":
            labels.append({"field": "instance", "value": "srv-instance-1"})
        return 200, [{"labels": labels, "values": [{"timestamp": stamp(), "value": value}], "unit": unit}]

    # The workspace: the owner the key acts for.

    def owner_view(self):
        return {"id": self.owner, "name": "self-test", "email": "", "type": "user"}

    def list_owners(self, query, body):
        names = query.get_list("name")
        items = [{"owner": self.owner_view(), "cursor": self.owner}]
        items = [i for i in items if not names or i["owner"]["name"] in names]
        return 200, self.page(query, items, lambda i: i["cursor"])

    def get_owner(self, query, body, oid):
        return (200, self.owner_view()) if oid == self.owner else self.missing("owner")

    def create_webhook(self, query, body):
        if body.get("ownerId") != self.owner:
            return self.missing("owner")
        hook = {
            "id": new_id("whk"),
            "url": body["url"],
            "name": body["name"],
            "secret": "whsec_" + base64.b64encode(os.urandom(32)).decode(),
            "enabled": body["enabled"],
            "eventFilter": body["eventFilter"],
        }
        self.webhooks[hook["id"]] = hook
        self.sends[hook["id"]] = []
        return 201, hook

    def list_webhooks(self, query, body):
        items = [{"webhook": h, "cursor": h["id"]} for h in self.webhooks.values()]
        return 200, self.page(query, items, lambda i: i["cursor"])

    def get_webhook(self, query, body, wid):
        hook = self.webhooks.get(wid)
        return (200, hook) if hook else self.missing("webhook")

    def patch_webhook(self, query, body, wid):
        hook = self.webhooks.get(wid)
        if not hook:
            return self.missing("webhook")
        hook.update({k: v for k, v in body.items() if k in ("name", "url", "enabled", "eventFilter")})
        return 200, hook

    def delete_webhook(self, query, body, wid):
        if not self.webhooks.pop(wid, None):
            return self.missing("webhook")
        return 204, None

    def list_sends(self, query, body, wid):
        if wid not in self.webhooks:
            return self.missing("webhook")
        after, before = query.get("sentAfter"), query.get("sentBefore")
        items = [
            {"webhookEvent": e, "cursor": f"{wid}:{n}"}
            for n, e in enumerate(self.sends[wid])
            if (not after or parse_time(e["sentAt"]) > parse_time(after))
            and (not before or parse_time(e["sentAt"]) < parse_time(before))
        ]
        return 200, self.page(query, items[::-1], lambda i: i["cursor"])

    def start_deploy(self, sid, ref, trigger, sha=None):
        deploy = {
            "id": new_id("dep"),
            "status": "update_in_progress",
            "trigger": trigger,
            "image": {"ref": ref, "sha": sha or self.digests[ref]},
            "createdAt": stamp(),
            "updatedAt": stamp(),
            "startedAt": stamp(),
        }
        self.deploys[sid].append(deploy)
        trigger_details = {
            "firstBuild": False,
            "envUpdated": False,
            "manual": False,
            "deployedByRender": False,
            "clearCache": False,
            "rollback": trigger == "rollback",
        }
        self.event(sid, "deploy_started", {"deployId": deploy["id"], "trigger": trigger_details})
        return deploy

    def end(self, sid, deploy, status):
        if status == "live":
            for other in self.deploys[sid]:
                if other["status"] == "live":
                    other["status"] = "deactivated"
        deploy.update(status=status, finishedAt=stamp(), updatedAt=stamp())
        outcome = {"live": "succeeded", "canceled": "canceled"}.get(status, "failed")
        self.event(
            sid,
            "deploy_ended",
            {"deployId": deploy["id"], "reason": {}, "deployStatus": outcome, "status": 2},
        )

    def find_deploy(self, sid, did):
        return next((d for d in self.deploys.get(sid, []) if d["id"] == did), None)

    def list_deploys(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        statuses = query.get_list("status")
        found = [
            {"deploy": d, "cursor": d["id"]}
            for d in reversed(self.deploys[sid])
            if not statuses or d["status"] in statuses
        ]
        return 200, self.page(query, found, lambda i: i["cursor"])

    def create_deploy(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        ref = body.get("imageUrl") or self.services[sid]["imagePath"]
        return 201, self.start_deploy(sid, ref, "api")

    def get_deploy(self, query, body, sid, did):
        deploy = self.find_deploy(sid, did)
        if not deploy:
            return self.missing("deploy")
        if deploy["status"] == "update_in_progress":
            self.end(sid, deploy, "live")
        return 200, deploy

    def cancel_deploy(self, query, body, sid, did):
        deploy = self.find_deploy(sid, did)
        if not deploy:
            return self.missing("deploy")
        self.end(sid, deploy, "canceled")
        return 200, deploy

    def rollback(self, query, body, sid):
        target = self.find_deploy(sid, body["deployId"])
        if not target:
            return self.missing("deploy")
        image = target["image"]
        return 201, self.start_deploy(sid, image["ref"], "rollback", sha=image["sha"])

    # Events.

    def list_events(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        kinds = query.get_list("type")
        found = [
            {"event": e, "cursor": e["id"]}
            for e in reversed(self.events)
            if e["serviceId"] == sid
            and (not kinds or e["type"] in kinds)
            and (
                "startTime" not in query
                or parse_time(e["timestamp"]) >= parse_time(query["startTime"])
            )
            and (
                "endTime" not in query or parse_time(e["timestamp"]) <= parse_time(query["endTime"])
            )
        ]
        return 200, self.page(query, found, lambda i: i["cursor"])

    def get_event(self, query, body, eid):
        event = next((e for e in self.events if e["id"] == eid), None)
        return (200, event) if event else self.missing("event")

    # Instances, scaling, suspension.

    def instances(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        n = self.services[sid]["serviceDetails"].get("numInstances", 0)
        return 200, [{"id": f"{sid}-{i}", "createdAt": stamp()} for i in range(n)]

    def scale(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        details = self.services[sid]["serviceDetails"]
        self.event(
            sid,
            "instance_count_changed",
            {"fromInstances": details["numInstances"], "toInstances": body["numInstances"]},
        )
        details["numInstances"] = body["numInstances"]
        return 202, None

    def autoscale(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        details = self.services[sid]["serviceDetails"]
        if body.get("min", 0) < 1 or body.get("max", 0) < body.get("min", 0):
            return 400, {"id": "invalid", "message": "min and max do not add up"}
        details["autoscaling"] = body
        n = details["numInstances"]
        into = min(max(n, body["min"]), body["max"])
        self.event(sid, "autoscaling_config_changed", {"toConfig": body})
        if into != n:
            self.event(sid, "instance_count_changed", {"fromInstances": n, "toInstances": into})
            details["numInstances"] = into
        return 200, body

    def delete_autoscaling(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        details = self.services[sid]["serviceDetails"]
        removed = details.pop("autoscaling", None)
        if removed is not None:
            self.event(sid, "autoscaling_config_changed", {"toConfig": dict(removed, enabled=False)})
        return 204, None

    def suspend(self, sid, suspended):
        if self.known(sid):
            return self.known(sid)
        self.services[sid]["suspended"] = "suspended" if suspended else "not_suspended"
        self.event(sid, "service_suspended" if suspended else "service_resumed", {})
        return 202, None

    # Environment variables.

    def list_env(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        items = [{"envVar": {"key": k, "value": v}, "cursor": k} for k, v in self.env[sid].items()]
        return 200, self.page(query, items, lambda i: i["cursor"])

    def replace_env(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        self.env[sid] = {e["key"]: e["value"] for e in body}
        return self.list_env({}, None, sid)

    def get_env(self, query, body, sid, key):
        if self.known(sid) or key not in self.env[sid]:
            return self.missing("env var")
        return 200, {"key": key, "value": self.env[sid][key]}

    def put_env(self, query, body, sid, key):
        if self.known(sid):
            return self.known(sid)
        self.env[sid][key] = body["value"]
        return 200, {"key": key, "value": body["value"]}

    def delete_env(self, query, body, sid, key):
        if self.known(sid) or key not in self.env[sid]:
            return self.missing("env var")
        del self.env[sid][key]
        return 204, None

    # Secret files.

    def list_files(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        items = [
            {"secretFile": {"name": k, "content": v}, "cursor": k}
            for k, v in sorted(self.files[sid].items())
        ]
        return 200, self.page(query, items, lambda i: i["cursor"])

    def replace_files(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        self.files[sid] = {f["name"]: f["content"] for f in body}
        return self.list_files({}, None, sid)

    def get_file(self, query, body, sid, name):
        if self.known(sid) or name not in self.files[sid]:
            return self.missing("secret file")
        return 200, {"name": name, "content": self.files[sid][name]}

    def put_file(self, query, body, sid, name):
        if self.known(sid):
            return self.known(sid)
        self.files[sid][name] = body["content"]
        return 201, {"name": name, "content": body["content"]}

    def delete_file(self, query, body, sid, name):
        if self.known(sid) or name not in self.files[sid]:
            return self.missing("secret file")
        del self.files[sid][name]
        return 204, None

    # Notification settings.

    def notify_setting(self):
        return {
            "ownerId": self.owner,
            "slackEnabled": False,
            "emailEnabled": True,
            "previewNotificationsEnabled": False,
            "notificationsToSend": self.notify,
        }

    def get_notify(self, query, body, owner):
        return (200, self.notify_setting()) if owner == self.owner else self.missing("owner")

    def patch_notify(self, query, body, owner):
        self.notify = body.get("notificationsToSend", self.notify)
        return self.get_notify(query, None, owner)

    def override(self, sid):
        return {
            "serviceId": sid,
            "previewNotificationsEnabled": "default",
            "notificationsToSend": self.overrides[sid],
        }

    def get_override(self, query, body, sid):
        return self.known(sid) or (200, self.override(sid))

    def patch_override(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        self.overrides[sid] = body.get("notificationsToSend", self.overrides[sid])
        return 200, self.override(sid)

    def list_overrides(self, query, body):
        wanted = query.get_list("serviceId")
        items = [
            {"override": self.override(sid), "cursor": sid}
            for sid in self.services
            if not wanted or sid in wanted
        ]
        return 200, self.page(query, items, lambda i: i["cursor"])

    # Cron job runs.

    def run_cron(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        run = {"id": new_id("crn"), "status": "pending", "startedAt": stamp()}
        self.runs[sid] = run
        self.event(sid, "cron_job_run_started", {"cronJobRunId": run["id"]})
        return 200, run

    def cancel_cron(self, query, body, sid):
        run = self.runs.pop(sid, None)
        if run:
            self.event(sid, "cron_job_run_ended", {"cronJobRunId": run["id"], "status": "canceled"})
        return 204, None

    # One-off jobs: a job ends at once, succeeded unless its command is a
    # `sleep` (then it runs until canceled).

    def create_job(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        command = body.get("startCommand", "").strip()
        if not command:
            return 400, {"id": "invalid", "message": "startCommand is blank"}
        running = command.startswith("sleep")
        job = {
            "id": new_id("job"),
            "serviceId": sid,
            "startCommand": command,
            "planId": body.get("planId") or self.services[sid].get("plan", "starter"),
            "createdAt": stamp(),
            "status": "running" if running else "succeeded",
            "startedAt": stamp(),
        }
        if not running:
            job["finishedAt"] = stamp()
        self.jobs.setdefault(sid, []).append(job)
        return 201, job

    def find_job(self, sid, jid):
        return next((j for j in self.jobs.get(sid, []) if j["id"] == jid), None)

    def list_jobs(self, query, body, sid):
        if self.known(sid):
            return self.known(sid)
        wanted = query.get_list("status")
        items = [
            {"job": j, "cursor": j["id"]}
            for j in reversed(self.jobs.get(sid, []))
            if not wanted or j["status"] in wanted
        ]
        return 200, self.page(query, items, lambda i: i["cursor"])

    def get_job(self, query, body, sid, jid):
        job = self.find_job(sid, jid)
        return (200, job) if job else self.missing("job")

    def cancel_job(self, query, body, sid, jid):
        job = self.find_job(sid, jid)
        if not job:
            return self.missing("job")
        if job["status"] in ("pending", "running"):
            job["status"] = "canceled"
            job["finishedAt"] = stamp()
        return 200, job

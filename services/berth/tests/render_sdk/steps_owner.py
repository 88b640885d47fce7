"""The owner's resources: registry credentials and notification settings."""

import datetime

from render.public_api.api.notification_settings import (
    list_notification_overrides,
    patch_owner_notification_settings,
    patch_service_notification_overrides,
    retrieve_owner_notification_settings,
    retrieve_service_notification_overrides,
)
from render.public_api.api.registry_credentials import (
    create_registry_credential,
    list_registry_credentials,
    retrieve_registry_credential,
    update_registry_credential,
)
from render.public_api.models import (
    CreateRegistryCredentialBody,
    NotificationOverrideWithCursor,
    NotificationServiceOverride,
    NotificationServiceOverridePATCH,
    NotificationSetting,
    NotificationSettingPATCH,
    NotifyOverride,
    NotifySettingV2,
    RegistryCredential,
    RegistryCredentialRegistry,
    UpdateRegistryCredentialBody,
)

from harness import show
from world import raw_id


# Registry credentials.


def credentials(h, w):
    op = "registry_credentials.create_registry_credential"
    name = f"{w.prefix}-registry"
    # Render's registries are hosted ones; berth also pulls from a
    # self-hosted registry, named by the extra `host` field (the SDK sends
    # a model's additional properties). Render's enum has no GENERIC, so
    # the registry says which protocol: a distribution registry speaks
    # Docker's.
    body = CreateRegistryCredentialBody(
        registry=RegistryCredentialRegistry.DOCKER,
        name=name,
        username=w.registry_user,
        auth_token=w.registry_password,
        owner_id=w.owner,
    )
    body.additional_properties["host"] = w.registry_host
    cred = h.call(
        op,
        create_registry_credential,
        body=body,
        expect=200,
        model=RegistryCredential,
        label="DOCKER+host",
    )
    leaked = h.last is not None and w.registry_password.encode() in h.last.content
    h.check(op, not leaked, "the answer holds the token")
    if cred:
        check_credential(h, op, cred, name, w.registry_user)
        w.credential = cred.id
    else:
        w.credential = raw_id(h, "id")
    # One made without the SDK is for the services only: judging it would
    # judge the fallback.
    judged = w.credential
    if not w.credential:
        w.credential = fallback_credential(h, w, name)

    body = CreateRegistryCredentialBody(
        registry=RegistryCredentialRegistry.GITHUB,
        name=f"{w.prefix}-spare",
        username=f"{w.prefix}-spare-user",
        auth_token="spare-token",
        owner_id=w.owner,
    )
    got = h.call(
        op,
        create_registry_credential,
        body=body,
        expect=200,
        model=RegistryCredential,
        label="GITHUB",
    )
    if got:
        check_credential(h, op, got, f"{w.prefix}-spare", f"{w.prefix}-spare-user", "GITHUB")
    w.spare_credential = got.id if got else raw_id(h, "id")

    op = "registry_credentials.list_registry_credentials"
    main, spare = [judged] if judged else [], [w.spare_credential] if w.spare_credential else []

    def listed(label, want, unwanted=(), **filters):
        got = h.call(
            op,
            list_registry_credentials,
            expect=200,
            model=RegistryCredential,
            many=True,
            label=label,
            limit=100,
            **filters,
        )
        if got is None:
            return
        seen = {c.id for c in got}
        h.check(op, set(want) <= seen, "does not list every matching credential", label)
        h.check(op, not (set(unwanted) & seen), "lists credentials the filter excludes", label)

    listed("no filter", main + spare)
    listed("name", main, spare, name=[name])
    listed("username", main, spare, username=[w.registry_user])
    listed("type", spare, main, type_=[RegistryCredentialRegistry.GITHUB])
    listed("ownerId", main + spare, owner_id=[w.owner])
    one = h.call(
        op,
        list_registry_credentials,
        expect=200,
        model=RegistryCredential,
        many=True,
        label="limit",
        limit=1,
    )
    if one is not None:
        h.check(op, len(one) == 1, f"limit=1 gave {len(one)} items", "limit")

    if not judged:
        for op in (
            "registry_credentials.retrieve_registry_credential",
            "registry_credentials.update_registry_credential",
        ):
            h.fail(op, "never called: the SDK's create made no credential")
        return
    op = "registry_credentials.retrieve_registry_credential"
    got = h.call(
        op,
        retrieve_registry_credential,
        w.credential,
        expect=200,
        model=RegistryCredential,
        label="created",
    )
    if got:
        h.check(op, got.id == w.credential, f"id {show(got.id)}, not {w.credential}")
        check_credential(h, op, got, name, w.registry_user)

    op = "registry_credentials.update_registry_credential"
    # Render requires all four fields. The token stays the same, so the
    # services created next still pull with it: the update must keep
    # the credential's registry host.
    renamed = f"{w.prefix}-registry-renamed"
    body = UpdateRegistryCredentialBody(
        registry=RegistryCredentialRegistry.DOCKER,
        name=renamed,
        username=w.registry_user,
        auth_token=w.registry_password,
    )
    got = h.call(
        op,
        update_registry_credential,
        w.credential,
        body=body,
        expect=200,
        model=RegistryCredential,
    )
    if got:
        check_credential(h, op, got, renamed, w.registry_user)
    again = h.call(
        "registry_credentials.retrieve_registry_credential",
        retrieve_registry_credential,
        w.credential,
        expect=200,
        model=RegistryCredential,
        label="after update",
    )
    if again:
        h.check(op, again.name == renamed, f"retrieved name {show(again.name)} after the update")


def check_credential(h, op, cred, name, username, registry="DOCKER"):
    h.check(op, cred.name == name, f"name {show(cred.name)}, not {name!r}")
    h.check(op, cred.username == username, f"username {show(cred.username)}")
    h.check(op, cred.registry.value == registry, f"registry {show(cred.registry)}, not {registry}")
    h.check(op, isinstance(cred.updated_at, datetime.datetime), "updatedAt is not a time")


def fallback_credential(h, w, name):
    """The credential through the API directly, in berth's own form, so the
    services can still be created when the SDK's create failed."""
    h.log("creating the credential without the SDK, to go on")
    r = h.raw.post(
        "/registrycredentials",
        json={
            "registry": "GENERIC",
            "host": w.registry_host,
            "name": name,
            "username": w.registry_user,
            "authToken": w.registry_password,
            "ownerId": w.owner,
        },
    )
    return r.json().get("id") if r.is_success else None


# Notification settings.


def notifications(h, w):
    op = "notification_settings.retrieve_owner_notification_settings"
    got = h.call(
        op,
        retrieve_owner_notification_settings,
        w.owner,
        expect=200,
        model=NotificationSetting,
        label="initial",
    )
    if got:
        h.check(op, got.owner_id == w.owner, f"ownerId {show(got.owner_id)}")
    before = got.notifications_to_send if got else NotifySettingV2.FAILURE

    op = "notification_settings.patch_owner_notification_settings"
    for value in (NotifySettingV2.ALL, before):
        got = h.call(
            op,
            patch_owner_notification_settings,
            w.owner,
            body=NotificationSettingPATCH(notifications_to_send=value),
            expect=200,
            model=NotificationSetting,
            label=value.value,
        )
        if got:
            h.check(
                op,
                got.notifications_to_send == value,
                f"answered {show(got.notifications_to_send)}",
                value.value,
            )
        again = h.call(
            "notification_settings.retrieve_owner_notification_settings",
            retrieve_owner_notification_settings,
            w.owner,
            expect=200,
            model=NotificationSetting,
            label=f"after patch {value.value}",
        )
        if again:
            h.check(
                op,
                again.notifications_to_send == value,
                f"reads back {show(again.notifications_to_send)}",
                value.value,
            )

    svc = w.services["background_worker"]
    if not svc.id:
        return
    op = "notification_settings.retrieve_service_notification_overrides"
    got = h.call(
        op,
        retrieve_service_notification_overrides,
        svc.id,
        expect=200,
        model=NotificationServiceOverride,
        label="new service",
    )
    if got:
        h.check(op, got.service_id == svc.id, f"serviceId {show(got.service_id)}")
        h.check(
            op,
            got.notifications_to_send == NotifyOverride.DEFAULT,
            f"a new service's override is {show(got.notifications_to_send)}, not 'default'",
        )

    op = "notification_settings.patch_service_notification_overrides"
    got = h.call(
        op,
        patch_service_notification_overrides,
        svc.id,
        body=NotificationServiceOverridePATCH(notifications_to_send=NotifyOverride.NONE),
        expect=200,
        model=NotificationServiceOverride,
    )
    if got:
        h.check(
            op,
            got.notifications_to_send == NotifyOverride.NONE,
            f"answered {show(got.notifications_to_send)}",
        )
    again = h.call(
        "notification_settings.retrieve_service_notification_overrides",
        retrieve_service_notification_overrides,
        svc.id,
        expect=200,
        model=NotificationServiceOverride,
        label="after patch",
    )
    if again:
        h.check(
            op,
            again.notifications_to_send == NotifyOverride.NONE,
            f"reads back {show(again.notifications_to_send)}",
        )

    op = "notification_settings.list_notification_overrides"
    for label, filters in (
        ("serviceId", {"service_id": [svc.id]}),
        ("ownerId", {"owner_id": [w.owner]}),
        ("no filter", {}),
    ):
        got = h.call(
            op,
            list_notification_overrides,
            expect=200,
            model=NotificationOverrideWithCursor,
            many=True,
            label=label,
            limit=100,
            **filters,
        )
        if got is not None:
            mine = [i.override for i in got if i.override.service_id == svc.id]
            h.check(
                op, len(mine) == 1, f"{len(mine)} overrides of the service listed, not 1", label
            )
            h.check(
                op,
                all(o.notifications_to_send == NotifyOverride.NONE for o in mine),
                "the listed override is not the patched one",
                label,
            )


# The workspace and the user: the owner the key acts for.


def workspace(h, w):
    from render.public_api.api.users import get_user
    from render.public_api.api.workspaces import list_owners, retrieve_owner
    from render.public_api.models import Owner, OwnerWithCursor, User

    op = "workspaces.list_owners"
    listed = h.call(op, list_owners, expect=200, model=OwnerWithCursor, many=True)
    if listed:
        ids = [o.owner.id for o in listed]
        h.check(op, ids == [w.owner], f"listed {ids}, not only {w.owner}")
        name = listed[0].owner.name
        by_name = h.call(op, list_owners, name=[name], expect=200, model=OwnerWithCursor, many=True, label="name")
        h.check(op, [o.owner.id for o in by_name or []] == [w.owner], "name does not find it", "name")
        other = h.call(
            op, list_owners, name=[name + "-not"], expect=200, model=OwnerWithCursor, many=True, label="other name"
        )
        h.check(op, other == [], f"another name gave {other}", "other name")
    op = "workspaces.retrieve_owner"
    got = h.call(op, retrieve_owner, w.owner, expect=200, model=Owner)
    if got:
        h.check(op, (got.id, got.type_.value) == (w.owner, "user"), f"answered {got.to_dict()}")
    op = "users.get_user"
    got = h.call(op, get_user, expect=200, model=User)
    if got:
        h.check(op, got.id == w.owner, f"answered {got.to_dict()}")

//! A service's disk through the API: given at create in Render's shape
//! (`serviceDetails.disk {name, mountPath, sizeGB}`), shown with the
//! service, refused with why where it cannot be kept (more than one
//! instance, a cron job, a path of the kernel's), never changed by an
//! update, and a service with one never scales past one instance.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::support::{App, Owner};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_is_given_at_create_shown_and_kept_to_one_instance() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let create = |name: &str, ty: &str, details: Value| {
        json!({
            "type": ty,
            "name": name,
            "image": {"imagePath": app.image("v1")},
            "serviceDetails": details,
        })
    };
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            create(
                "pg",
                "private_service",
                json!({"disk": {"name": "pgdata", "mountPath": "/var/lib/postgresql/data", "sizeGB": 10}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["service"]["id"].as_str().unwrap().to_owned();
    let disk = &v["service"]["serviceDetails"]["disk"];
    assert!(disk["id"].as_str().unwrap().starts_with("dsk-"), "{disk}");
    assert_eq!(disk["name"], "pgdata");
    assert_eq!(disk["mountPath"], "/var/lib/postgresql/data");
    assert_eq!(disk["sizeGB"], 10);
    let (s, got) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["serviceDetails"]["disk"]["id"], disk["id"]);

    // sizeGB defaults to 1; a service without one shows none.
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            create(
                "small",
                "web_service",
                json!({"disk": {"name": "d", "mountPath": "/data"}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["service"]["serviceDetails"]["disk"]["sizeGB"], 1);
    let plain = app.web_service(&alice, "plain").await;
    let (_, v) = app.get(&format!("/v1/services/{plain}"), &alice).await;
    assert!(v["serviceDetails"].get("disk").is_none(), "{v}");

    // Refused with why, and nothing made.
    let before = app.all_pages("/v1/services", &alice, "service").await.len();
    for (name, ty, details, says) in [
        (
            "two",
            "web_service",
            json!({"numInstances": 2, "disk": {"name": "d", "mountPath": "/data"}}),
            "numInstances",
        ),
        (
            "cron",
            "cron_job",
            json!({"schedule": "0 3 * * *", "disk": {"name": "d", "mountPath": "/data"}}),
            "cron job cannot have a disk",
        ),
        (
            "nopath",
            "web_service",
            json!({"disk": {"name": "d"}}),
            "serviceDetails.disk.mountPath",
        ),
        (
            "noname",
            "web_service",
            json!({"disk": {"mountPath": "/data"}}),
            "serviceDetails.disk.name",
        ),
        (
            "root",
            "web_service",
            json!({"disk": {"name": "d", "mountPath": "/"}}),
            "mountPath",
        ),
        (
            "proc",
            "web_service",
            json!({"disk": {"name": "d", "mountPath": "/proc/x"}}),
            "mountPath",
        ),
        (
            "up",
            "web_service",
            json!({"disk": {"name": "d", "mountPath": "/a/../b"}}),
            "mountPath",
        ),
        (
            "zero",
            "web_service",
            json!({"disk": {"name": "d", "mountPath": "/data", "sizeGB": 0}}),
            "sizeGB",
        ),
        (
            "huge",
            "web_service",
            json!({"disk": {"name": "d", "mountPath": "/data", "sizeGB": 4096}}),
            "sizeGB",
        ),
        (
            "extra",
            "web_service",
            json!({"disk": {"name": "d", "mountPath": "/data", "snapshot": true}}),
            "snapshot",
        ),
    ] {
        let (s, v) = app
            .post("/v1/services", &alice, create(name, ty, details))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {v}");
        assert!(v.to_string().contains(says), "{name}: {v}");
    }
    assert_eq!(
        app.all_pages("/v1/services", &alice, "service").await.len(),
        before
    );

    // One instance, always; the disk is not changed by an update.
    let (s, v) = app
        .post(
            &format!("/v1/services/{id}/scale"),
            &alice,
            json!({"numInstances": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("disk"), "{v}");
    let (s, v) = app
        .patch(
            &format!("/v1/services/{id}"),
            &alice,
            json!({"serviceDetails": {"disk": {"name": "other", "mountPath": "/other"}}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("serviceDetails.disk"), "{v}");
    let (_, got) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert_eq!(got["serviceDetails"]["disk"]["name"], "pgdata");

    // The dashboard's service page says where it is kept.
    let mut b = crate::dashboard::signed_in(&app, &alice).await;
    let page = b.get(&format!("/services/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.html
            .contains("pgdata at <code>/var/lib/postgresql/data</code>, 10 GB"),
        "{}",
        page.html
    );

    // The dashboard's form makes one too, and says what is wrong with one.
    let image = app.image("v1");
    let form = |name: &'static str, path: &'static str| {
        vec![
            ("type", "background_worker"),
            ("name", name),
            ("imagePath", image.as_str()),
            ("numInstances", "1"),
            ("plan", "starter"),
            ("diskName", "files"),
            ("diskMountPath", path),
            ("diskSizeGB", "3"),
        ]
    };
    let page = b
        .submit("/services/new", "/services", &form("by-form", "/srv/files"))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    assert!(
        page.html.contains("files at <code>/srv/files</code>, 3 GB"),
        "{}",
        page.html
    );
    // Its metrics page charts the disk's use; one without a disk has none.
    berth_api::metrics::ensure_stream(&app.store, 1 << 24)
        .await
        .unwrap();
    let charts = b.get(&format!("/services/{id}/metrics")).await;
    assert_eq!(charts.status, StatusCode::OK, "{}", charts.html);
    assert!(charts.html.contains("Disk in use"), "{}", charts.html);
    let charts = b.get(&format!("/services/{plain}/metrics")).await;
    assert_eq!(charts.status, StatusCode::OK, "{}", charts.html);
    assert!(!charts.html.contains("Disk in use"), "{}", charts.html);
    let page = b
        .submit(
            "/services/new",
            "/services",
            &form("bad-form", "/proc/files"),
        )
        .await;
    assert!(
        page.html.contains("The service was not created") && page.html.contains("mountPath"),
        "{}",
        page.html
    );
}

/// The disk ids of a `GET /v1/disks` page, in its order.
fn disk_ids(page: &Value) -> Vec<&str> {
    page.as_array()
        .unwrap()
        .iter()
        .map(|i| i["disk"]["id"].as_str().unwrap())
        .collect()
}

/// Creates a worker named `name` with `disk`: (service id, disk id).
async fn create(app: &App, o: &Owner, name: &str, disk: Value) -> (String, String) {
    let (s, v) = app
        .post(
            "/v1/services",
            o,
            json!({
                "type": "background_worker",
                "name": name,
                "image": {"imagePath": app.image("v1")},
                "serviceDetails": {"disk": disk},
            }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = |v: &Value| v.as_str().unwrap().to_owned();
    (
        id(&v["service"]["id"]),
        id(&v["service"]["serviceDetails"]["disk"]["id"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_are_listed_retrieved_and_grown_in_renders_shape() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let (pg, pg_disk) = create(
        &app,
        &alice,
        "pg",
        json!({"name": "pgdata", "mountPath": "/var/lib/postgresql/data", "sizeGB": 10}),
    )
    .await;
    let (cache, cache_disk) = create(
        &app,
        &alice,
        "cache",
        json!({"name": "cache", "mountPath": "/data"}),
    )
    .await;
    let (_, bobs_disk) = create(
        &app,
        &bob,
        "his",
        json!({"name": "his", "mountPath": "/data"}),
    )
    .await;
    app.service(&alice, "no-disk").await;

    // Listed, newest service first, only the caller's, in Render's shape.
    let (s, v) = app.get("/v1/disks", &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ids = disk_ids(&v);
    assert_eq!(ids, [cache_disk.as_str(), pg_disk.as_str()]);
    let d = &v[1]["disk"];
    assert_eq!(
        (&d["name"], &d["mountPath"], &d["sizeGB"], &d["serviceId"]),
        (
            &json!("pgdata"),
            &json!("/var/lib/postgresql/data"),
            &json!(10),
            &json!(pg)
        )
    );
    assert!(
        d["createdAt"].is_string() && d["updatedAt"] == d["createdAt"],
        "{d}"
    );
    for (q, want) in [
        ("name=pgdata".to_owned(), vec![pg_disk.as_str()]),
        (format!("serviceId={cache}"), vec![cache_disk.as_str()]),
        (
            format!("diskId={pg_disk},{bobs_disk}"),
            vec![pg_disk.as_str()],
        ),
        (format!("ownerId={}", bob.id), vec![]),
    ] {
        let (s, v) = app.get(&format!("/v1/disks?{q}"), &alice).await;
        assert_eq!(s, StatusCode::OK, "{q}: {v}");
        let got = disk_ids(&v);
        assert_eq!(got, want, "{q}");
    }
    // By creation time: the bounds are inclusive RFC 3339 times.
    let made = |v: &Value| v["createdAt"].as_str().unwrap().to_owned();
    let (_, first) = app.get(&format!("/v1/disks/{pg_disk}"), &alice).await;
    let (_, second) = app.get(&format!("/v1/disks/{cache_disk}"), &alice).await;
    let after = form_urlencoded::byte_serialize(made(&second).as_bytes()).collect::<String>();
    let before = form_urlencoded::byte_serialize(made(&first).as_bytes()).collect::<String>();
    for (q, want) in [
        (format!("createdAfter={after}"), vec![cache_disk.as_str()]),
        (format!("createdBefore={before}"), vec![pg_disk.as_str()]),
        ("updatedAfter=2999-01-01T00:00:00Z".to_owned(), vec![]),
    ] {
        let (s, v) = app.get(&format!("/v1/disks?{q}"), &alice).await;
        assert_eq!(s, StatusCode::OK, "{q}: {v}");
        let got = disk_ids(&v);
        assert_eq!(got, want, "{q}");
    }
    let (s, v) = app.get("/v1/disks?createdAfter=soon", &alice).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("createdAfter"), "{v}");
    // Paged by cursor.
    let (_, first) = app.get("/v1/disks?limit=1", &alice).await;
    let cursor = first[0]["cursor"].as_str().unwrap();
    let (_, next) = app
        .get(&format!("/v1/disks?limit=1&cursor={cursor}"), &alice)
        .await;
    assert_eq!(next[0]["disk"]["id"], pg_disk.as_str());

    // Retrieved; another owner's is not found, as none is.
    let (s, v) = app.get(&format!("/v1/disks/{pg_disk}"), &alice).await;
    assert_eq!((s, &v["serviceId"]), (StatusCode::OK, &json!(pg)), "{v}");
    for (who, id) in [
        (&bob, pg_disk.as_str()),
        (&alice, bobs_disk.as_str()),
        (&alice, "dsk-aaaaaaaaaaaaaaaaaaaa"),
        (&alice, "nope"),
    ] {
        let (s, v) = app.get(&format!("/v1/disks/{id}"), who).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{id}: {v}");
        assert!(!v.to_string().contains("pgdata"), "{v}");
    }

    // Grown and renamed; never shrunk, nor mounted where it cannot be.
    for (body, says) in [
        (json!({"sizeGB": 5}), "only grows"),
        (json!({"sizeGB": 4096}), "sizeGB"),
        (json!({"mountPath": "/proc/x"}), "mountPath"),
        (json!({"name": ""}), "name"),
        (json!({"snapshot": true}), "snapshot"),
    ] {
        let (s, v) = app
            .patch(&format!("/v1/disks/{pg_disk}"), &alice, body.clone())
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v.to_string().contains(says), "{body}: {v}");
    }
    let (s, v) = app
        .patch(&format!("/v1/disks/{pg_disk}"), &bob, json!({"sizeGB": 20}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = app
        .patch(
            &format!("/v1/disks/{pg_disk}"),
            &alice,
            json!({"sizeGB": 20, "name": "pg-data"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((&v["sizeGB"], &v["name"]), (&json!(20), &json!("pg-data")));
    assert!(v["updatedAt"].as_str() > v["createdAt"].as_str(), "{v}");
    let (_, svc) = app.get(&format!("/v1/services/{pg}"), &alice).await;
    assert_eq!(svc["serviceDetails"]["disk"]["sizeGB"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_is_added_to_a_service_and_deleted_each_with_a_deploy() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "worker").await;
    // The resolver done with it: nothing else appends here meanwhile.
    let first = app.latest_deploy(&alice, &svc).await;
    app.wait_resolved(&alice, &svc, &first).await;
    let before = deploys(&app, &alice, &svc).await;

    // Refused with why, nothing appended: no service, another owner's,
    // missing fields, a bad path.
    let bob = app.owner().await;
    let seq = app.last_seq().await;
    for (who, body, status, says) in [
        (
            &alice,
            json!({"name": "d", "mountPath": "/d"}),
            400,
            "serviceId",
        ),
        (
            &bob,
            json!({"serviceId": svc, "name": "d", "mountPath": "/d"}),
            404,
            "service",
        ),
        (
            &alice,
            json!({"serviceId": svc, "mountPath": "/d"}),
            400,
            "name",
        ),
        (
            &alice,
            json!({"serviceId": svc, "name": "d", "mountPath": "/proc/x"}),
            400,
            "mountPath",
        ),
        (
            &alice,
            json!({"serviceId": svc, "name": "d", "mountPath": "/d", "extra": 1}),
            400,
            "extra",
        ),
    ] {
        let (s, v) = app.post("/v1/disks", who, body.clone()).await;
        assert_eq!(s.as_u16(), status, "{body}: {v}");
        assert!(v.to_string().contains(says), "{body}: {v}");
    }
    assert_eq!(app.last_seq().await, seq);

    let (s, d) = app
        .post(
            "/v1/disks",
            &alice,
            json!({"serviceId": svc, "name": "extra", "mountPath": "/srv/extra", "sizeGB": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let disk = d["id"].as_str().unwrap().to_owned();
    assert!(disk.starts_with("dsk-"), "{d}");
    assert_eq!(
        (&d["serviceId"], &d["name"], &d["mountPath"], &d["sizeGB"]),
        (
            &json!(svc),
            &json!("extra"),
            &json!("/srv/extra"),
            &json!(3)
        )
    );
    let (_, shown) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(shown["serviceDetails"]["disk"]["id"], disk.as_str());
    assert_eq!(deploys(&app, &alice, &svc).await, before + 1);

    // One disk a service; a disk keeps it to one instance.
    let (s, v) = app
        .post(
            "/v1/disks",
            &alice,
            json!({"serviceId": svc, "name": "more", "mountPath": "/more"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("has a disk already"), "{v}");

    // Another owner cannot delete it; its owner can, once.
    let (s, _) = app.delete(&format!("/v1/disks/{disk}"), &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = app.delete(&format!("/v1/disks/{disk}"), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _) = app.get(&format!("/v1/disks/{disk}"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.delete(&format!("/v1/disks/{disk}"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, shown) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert!(shown["serviceDetails"]["disk"].is_null(), "{shown}");
    assert_eq!(deploys(&app, &alice, &svc).await, before + 2);
}

/// How many deploys `svc` has.
async fn deploys(app: &App, o: &Owner, svc: &str) -> usize {
    let (_, v) = app.get(&format!("/v1/services/{svc}/deploys"), o).await;
    v.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disks_snapshots_are_listed_asked_for_and_restored_in_renders_shape() {
    use berth_schemas::ids::DiskSnapshotKey;

    let app = App::start(true).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let (svc, disk) = settled_with_disk(&app, &alice).await;
    let snaps = format!("/v1/disks/{disk}/snapshots");
    let restore = format!("/v1/disks/{disk}/snapshots/restore");
    // None yet: 201 (Render's status for this listing) and an empty list;
    // asking before the disk is placed anywhere is refused, as is any
    // restore of a snapshot it does not have.
    let (s, v) = app.get(&snaps, &alice).await;
    assert_eq!((s, v.clone()), (StatusCode::CREATED, json!([])), "{v}");
    let (s, v) = app.post(&snaps, &alice, json!(null)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("holds nothing yet"), "{v}");

    let node = place(&app, &svc, &disk).await;
    app.state.caught_up().await.unwrap();
    let (s, v) = app.post(&snaps, &alice, json!(null)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, _) = app.post(&snaps, &bob, json!(null)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let keys: Vec<DiskSnapshotKey> = (0..2).map(|_| DiskSnapshotKey::generate()).collect();
    for k in &keys {
        snapshot_taken(&app, &svc, &disk, &node, k).await;
    }
    let (s, v) = app.get(&snaps, &alice).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let listed: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshotKey"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [keys[1].as_str(), keys[0].as_str()], "newest first");
    assert_eq!(v[0]["sizeBytes"], 8192);
    assert!(v[0]["createdAt"].as_str().unwrap().ends_with('Z'), "{v}");
    let (s, _) = app.get(&snaps, &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Restores refused with why, nothing appended.
    let seq = app.last_seq().await;
    for (who, body, status, says) in [
        (&alice, json!({}), 400, "snapshotKey"),
        (&alice, json!({"snapshotKey": "nope"}), 404, "snapshot"),
        (
            &alice,
            json!({"snapshotKey": DiskSnapshotKey::generate()}),
            404,
            "snapshot",
        ),
        (
            &alice,
            json!({"snapshotKey": keys[0], "instanceId": "ins-x"}),
            404,
            "instance",
        ),
        (
            &alice,
            json!({"snapshotKey": keys[0], "extra": 1}),
            400,
            "extra",
        ),
        (&bob, json!({"snapshotKey": keys[0]}), 404, "disk"),
    ] {
        let (s, v) = app.post(&restore, who, body.clone()).await;
        assert_eq!(s.as_u16(), status, "{body}: {v}");
        assert!(v.to_string().contains(says), "{body}: {v}");
    }
    assert_eq!(app.last_seq().await, seq);

    // Restored: the disk answered, a deploy made, the timeline says it in
    // Render's shape.
    let before = deploys(&app, &alice, &svc).await;
    let (s, v) = app
        .post(
            &restore,
            &alice,
            json!({"snapshotKey": keys[0], "instanceId": svc}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["id"], disk.as_str());
    assert_eq!(deploys(&app, &alice, &svc).await, before + 1);
    let (_, events) = app
        .get(
            &format!("/v1/services/{svc}/events?type=disk_snapshot_restored"),
            &alice,
        )
        .await;
    let details = &events[0]["event"]["details"];
    assert_eq!(details["diskId"], disk.as_str(), "{events}");
    assert_eq!(details["snapshotKey"], keys[0].as_str(), "{events}");
    assert!(details["triggeredByUser"].is_null(), "{events}");
}

/// A worker of `o`'s with a disk, its deploy resolved: nothing else
/// happens to it here (no node takes it further). (service id, disk id)
async fn settled_with_disk(app: &App, o: &Owner) -> (String, String) {
    let (svc, disk) = create(app, o, "db", json!({"name": "data", "mountPath": "/data"})).await;
    let first = app.latest_deploy(o, &svc).await;
    app.wait_resolved(o, &svc, &first).await;
    (svc, disk)
}

/// What the scheduler records as it places `disk` with its first
/// instance, on a node of its own.
async fn place(app: &App, svc: &str, disk: &str) -> berth_schemas::ids::NodeId {
    let id = berth_schemas::AggregateId::Service(svc.parse().unwrap());
    let node = berth_schemas::ids::NodeId::generate();
    let placed = berth_schemas::events::DiskPlaced {
        disk: disk.parse().unwrap(),
        node: node.clone(),
    };
    // Appended at the version read; the resolver may append meanwhile.
    for _ in 0..20 {
        let at = app.store.load(&id).await.unwrap().version;
        let appended = app
            .store
            .append(
                &id,
                at,
                vec![berth_eventlog::NewEvent::new(
                    placed.clone(),
                    berth_schemas::Actor::system("scheduler"),
                )],
                &format!("placed-{disk}"),
            )
            .await;
        if appended.is_ok() {
            return node;
        }
    }
    panic!("the disk could not be placed");
}

/// What the disk's node records as it takes snapshot `key`.
async fn snapshot_taken(
    app: &App,
    svc: &str,
    disk: &str,
    node: &berth_schemas::ids::NodeId,
    key: &berth_schemas::ids::DiskSnapshotKey,
) {
    use berth_domain::service::{Command, Service};
    let id = berth_schemas::AggregateId::Service(svc.parse().unwrap());
    let command = Command::RecordDiskSnapshot {
        disk: disk.parse().unwrap(),
        key: key.clone(),
        node: node.clone(),
        bytes: 8192,
    };
    app.store
        .execute::<Service>(
            &id,
            key.as_str(),
            &berth_eventlog::Stamp::new(berth_schemas::Actor::system("node")),
            command,
        )
        .await
        .unwrap();
    app.state.caught_up().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_a_disks_snapshots_takes_one_and_restores_one() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, disk) = settled_with_disk(&app, &alice).await;
    let node = place(&app, &svc, &disk).await;
    app.state.caught_up().await.unwrap();
    let mut b = crate::dashboard::signed_in(&app, &alice).await;
    let page = format!("/services/{svc}");
    let shown = b.get(&page).await;
    assert!(
        shown.html.contains("Disk snapshots") && shown.html.contains("No snapshots yet."),
        "{}",
        shown.html
    );

    let before = app.last_seq().await;
    let asked = b
        .submit(&page, &format!("/services/{svc}/disk-snapshots"), &[])
        .await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.html);
    assert!(asked.html.contains("Snapshot asked for"), "{}", asked.html);
    assert!(
        app.last_seq().await > before,
        "nothing was asked of the node"
    );

    let key = berth_schemas::ids::DiskSnapshotKey::generate();
    snapshot_taken(&app, &svc, &disk, &node, &key).await;
    let listed = b.get(&page).await;
    assert!(listed.html.contains(key.as_str()), "{}", listed.html);
    let deploys_before = deploys(&app, &alice, &svc).await;
    let restored = b
        .submit(
            &page,
            &format!("/services/{svc}/disk-snapshots/restore"),
            &[("snapshotKey", key.as_str())],
        )
        .await;
    assert!(
        restored.html.contains(&format!("Disk set back to {key}")),
        "{}",
        restored.html
    );
    assert_eq!(deploys(&app, &alice, &svc).await, deploys_before + 1);
    // The timeline says it in words.
    let events = b.get(&page).await;
    assert!(
        events
            .html
            .contains(&format!("set back to its snapshot {key}")),
        "{}",
        events.html
    );
    // An unknown key is the API's 404, said on the page.
    let unknown = b
        .submit(
            &page,
            &format!("/services/{svc}/disk-snapshots/restore"),
            &[("snapshotKey", "snp-aaaaaaaaaaaaaaaaaaaa")],
        )
        .await;
    assert!(unknown.html.contains("snapshot"), "{}", unknown.html);
    assert_eq!(deploys(&app, &alice, &svc).await, deploys_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_over_90_percent_full_is_said_with_the_service_and_on_its_page() {
    use berth_domain::service::{Command, Service};
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, disk) = settled_with_disk(&app, &alice).await;
    // What the disk's node reports as it measures it.
    let measured = |used: u64| {
        let (store, svc, disk) = (app.store.clone(), svc.clone(), disk.clone());
        async move {
            let id = berth_schemas::AggregateId::Service(svc.parse().unwrap());
            let command = Command::RecordDiskUsage {
                disk: disk.parse().unwrap(),
                used_bytes: used,
                size_bytes: 1000,
            };
            store
                .execute::<Service>(
                    &id,
                    &format!("usage-{used}"),
                    &berth_eventlog::Stamp::new(berth_schemas::Actor::system("node")),
                    command,
                )
                .await
                .unwrap();
        }
    };
    let shown = |v: &Value| v["serviceDetails"]["disk"]["usageHigh"].clone();
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(shown(&v), Value::Null, "{v}");
    measured(950).await;
    app.state.caught_up().await.unwrap();
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(shown(&v), json!(true), "{v}");
    let mut b = crate::dashboard::signed_in(&app, &alice).await;
    let page = b.get(&format!("/services/{svc}")).await;
    assert!(page.html.contains("over 90 % full"), "{}", page.html);
    let (_, events) = app
        .get(
            &format!("/v1/services/{svc}/events?type=service_disk_usage_high"),
            &alice,
        )
        .await;
    assert_eq!(
        events[0]["event"]["details"]["usagePercent"], 95.0,
        "{events}"
    );
    measured(100).await;
    app.state.caught_up().await.unwrap();
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(shown(&v), Value::Null, "{v}");
    let page = b.get(&format!("/services/{svc}")).await;
    assert!(!page.html.contains("over 90 % full"), "{}", page.html);
}

//! `/v1/metrics/…` over samples published as nodes and routers publish
//! them: CPU as a rate of CPU time, memory, instance counts, requests by
//! status class and latency quantiles, bucketed by the asked resolution;
//! the query validated; another owner's service not found.

use std::time::Duration;

use axum::http::StatusCode;
use berth_schemas::ids::{InstanceId, NodeId, ServiceId};
use berth_schemas::metrics::{HttpSample, InstanceUsage, UsageSample, LATENCY_BUCKETS_MS};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::support::App;

async fn publish<T: serde::Serialize>(app: &App, subject: String, sample: &T) {
    app.store
        .client()
        .publish(subject, serde_json::to_vec(sample).unwrap().into())
        .await
        .unwrap();
}

fn values(series: &Value) -> Vec<f64> {
    series["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_from_samples_for_the_owner_only() {
    let app = App::start(true).await;
    berth_api::metrics::ensure_stream(&app.store, 1 << 24)
        .await
        .unwrap();
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "measured").await;
    let service: ServiceId = svc.parse().unwrap();
    let subjects = app.store.subjects().clone();
    let node = NodeId::generate();
    let (i1, i2) = (InstanceId::generate(), InstanceId::generate());
    // A minute ago, four samples 15 s apart: i1 uses half a core and
    // 100 MiB, i2 joins at the third.
    let t0: DateTime<Utc> = Utc::now() - chrono::Duration::seconds(60);
    for k in 0..4u64 {
        // i1 has its service's disk: 1 GiB, k MiB of it in use.
        let mut instances = vec![InstanceUsage {
            instance: i1.clone(),
            cpu_nanos: k * 7_500_000_000,
            memory_bytes: 100 << 20,
            memory_limit_bytes: 512 << 20,
            cpu_limit_millis: 500,
            disk_used_bytes: Some(k << 20),
            disk_capacity_bytes: Some(1 << 30),
        }];
        if k >= 2 {
            instances.push(InstanceUsage {
                instance: i2.clone(),
                cpu_nanos: 0,
                memory_bytes: 50 << 20,
                memory_limit_bytes: 512 << 20,
                cpu_limit_millis: 500,
                disk_used_bytes: None,
                disk_capacity_bytes: None,
            });
        }
        let sample = UsageSample {
            node: node.clone(),
            time: t0 + chrono::Duration::seconds(15 * k as i64),
            instances,
        };
        publish(&app, subjects.usage(&service, &node), &sample).await;
    }
    let mut buckets = vec![0u64; LATENCY_BUCKETS_MS.len() + 1];
    buckets[0] = 90; // ≤ 5 ms
    buckets[4] = 10; // 50-100 ms
    let http = HttpSample {
        router: "r1".to_owned(),
        time: t0 + chrono::Duration::seconds(30),
        interval_secs: 15,
        counts: [("2xx".to_owned(), 95), ("5xx".to_owned(), 5)].into(),
        latency_buckets: buckets,
    };
    publish(&app, subjects.http_metrics(&service, "r1"), &http).await;
    app.store.server_round_trip().await.unwrap();
    // Samples reach the stream asynchronously to the publish.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let window = format!(
        "resource={svc}&startTime={}&endTime={}&resolutionSeconds=3600",
        (t0 - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (t0 + chrono::Duration::seconds(120)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let get = |route: &str, extra: &str| {
        let path = format!("/v1/metrics/{route}?{window}{extra}");
        let app = &app;
        let alice = &alice;
        async move { app.get(&path, alice).await }
    };
    let (s, cpu) = get("cpu", "").await;
    assert_eq!(s, StatusCode::OK, "{cpu}");
    let one = cpu
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["labels"].to_string().contains(&i1.to_string()))
        .unwrap();
    assert_eq!(one["unit"], "cpu");
    assert!(values(one).iter().all(|v| (v - 0.5).abs() < 1e-6), "{one}");
    let (_, cpu_i2) = get("cpu", &format!("&instance={i2}")).await;
    assert_eq!(
        cpu_i2.as_array().unwrap().len(),
        1,
        "one instance asked: {cpu_i2}"
    );
    let (s, mem) = get("memory", "&aggregationMethod=MAX").await;
    assert_eq!(s, StatusCode::OK, "{mem}");
    let maxes: Vec<f64> = mem.as_array().unwrap().iter().flat_map(values).collect();
    assert!(
        maxes.contains(&((100u64 << 20) as f64)) && maxes.contains(&((50u64 << 20) as f64)),
        "{mem}"
    );
    // Each instance's limits, as its cgroup says.
    let (s, cpu_limit) = get("cpu-limit", "").await;
    assert_eq!(s, StatusCode::OK, "{cpu_limit}");
    assert_eq!(cpu_limit.as_array().unwrap().len(), 2, "{cpu_limit}");
    assert_eq!(cpu_limit[0]["unit"], "cpu");
    assert!(
        cpu_limit
            .as_array()
            .unwrap()
            .iter()
            .flat_map(values)
            .all(|v| v == 0.5),
        "{cpu_limit}"
    );
    let (_, mem_limit) = get("memory-limit", &format!("&instance={i1}")).await;
    assert_eq!(
        values(&mem_limit[0]),
        vec![(512u64 << 20) as f64],
        "{mem_limit}"
    );
    // What the series may be filtered by.
    let (s, apps) = get("filters/application", "").await;
    assert_eq!(s, StatusCode::OK, "{apps}");
    let mut ids = vec![i1.to_string(), i2.to_string()];
    ids.sort();
    assert_eq!(
        apps,
        serde_json::json!([{"filter": "instance", "values": ids}])
    );
    let (_, classes) = get("filters/http", "").await;
    assert_eq!(
        classes,
        serde_json::json!([{"filter": "statusCode", "values": ["2xx", "5xx"]}])
    );
    let (_, count) = get("instance-count", "").await;
    assert_eq!(values(&count[0]), vec![2.0], "{count}");
    // The disk: only the instance that has it, its latest use and size.
    let (s, used) = get("disk-usage", "&aggregationMethod=MAX").await;
    assert_eq!(s, StatusCode::OK, "{used}");
    assert_eq!(used.as_array().unwrap().len(), 1, "{used}");
    assert_eq!(used[0]["unit"], "bytes");
    assert_eq!(values(&used[0]), vec![(3u64 << 20) as f64], "{used}");
    let (_, size) = get("disk-capacity", "").await;
    assert_eq!(values(&size[0]), vec![(1u64 << 30) as f64], "{size}");
    let (s, req) = get("http-requests", "&aggregateBy=statusCode").await;
    assert_eq!(s, StatusCode::OK, "{req}");
    let class = |c: &str| {
        req.as_array()
            .unwrap()
            .iter()
            .find(|s| s["labels"].to_string().contains(c))
            .map(values)
    };
    assert_eq!(
        (class("2xx"), class("5xx")),
        (Some(vec![95.0]), Some(vec![5.0])),
        "{req}"
    );
    let (_, p50) = get("http-latency", "&quantile=0.5").await;
    let (_, p99) = get("http-latency", "&quantile=0.99").await;
    let (p50, p99) = (values(&p50[0])[0], values(&p99[0])[0]);
    assert!(
        p50 <= 5.0 && (50.0..=100.0).contains(&p99),
        "p50 {p50}, p99 {p99}"
    );

    // The query is checked.
    for bad in [
        format!("/v1/metrics/cpu?{window}&aggregationMethod=MEDIAN"),
        format!("/v1/metrics/cpu?{window}&resolutionSeconds=1"),
        format!("/v1/metrics/http-latency?{window}&quantile=2"),
        format!("/v1/metrics/http-requests?{window}&aggregateBy=path"),
        "/v1/metrics/memory".to_owned(),
        format!("/v1/metrics/memory?resource={svc}&startTime=2030-01-01T00:00:00Z&endTime=2029-01-01T00:00:00Z"),
    ] {
        let (s, v) = app.get(&bad, &alice).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    // Nothing in the window: no series, not an error.
    let (s, v) = app
        .get(&format!("/v1/metrics/memory?resource={svc}&startTime=2020-01-01T00:00:00Z&endTime=2020-01-02T00:00:00Z"), &alice)
        .await;
    assert_eq!((s, v), (StatusCode::OK, serde_json::json!([])));
    // Another owner: not found, for every route.
    let bob = app.owner().await;
    for route in [
        "cpu",
        "memory",
        "instance-count",
        "http-requests",
        "http-latency",
    ] {
        let (s, _) = app
            .get(&format!("/v1/metrics/{route}?{window}"), &bob)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{route}");
    }
}

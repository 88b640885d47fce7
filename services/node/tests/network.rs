//! Instance networks against real runc and the real CNI plugins (as root):
//! images that listen on a port of their own choosing, one namespace per
//! instance, what an instance can and cannot reach, and that nothing of a
//! network is left once its instances are gone.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use berth_schemas::commands::NodeRunSpec;
use berth_schemas::ids::{DeployId, InstanceId, OwnerId, ServiceId, UserId};
use berth_schemas::model::ServiceType;
use serde_json::json;

use crate::support::{self, addr_of, count_of, exec, fast_checks, http_get, run, spec, start_node};
use berth_tests::agent::busybox_image;
use berth_tests::node::{World, REPO};

/// A server that listens on 10000 whatever `PORT` says, as most images do.
const FIXED_10000: &str = "/bin/busybox httpd -f -p 10000 -h /app";

/// A service of `owner` named `name`, resolved to `digest`; a web
/// service checked on `/hello.txt`.
async fn service_of(
    w: &World,
    owner: &OwnerId,
    name: &str,
    ty: ServiceType,
    digest: &str,
) -> (ServiceId, DeployId) {
    let path = (ty == ServiceType::WebService).then_some("/hello.txt");
    support::service_of(w, owner, name, ty, path, digest).await
}

/// Waits until every instance of `ids` of `service` is healthy; their
/// `instance_started` addresses.
async fn healthy(w: &World, service: &ServiceId, ids: &[&InstanceId]) -> Vec<String> {
    let events = support::healthy_once(w, service, ids).await;
    ids.iter().map(|i| addr_of(&events, i).unwrap()).collect()
}

/// `wget` from inside `id`, given 3 s (busybox's own `-T` crashes).
fn wget(w: &World, id: &InstanceId, url: &str) -> (i32, String) {
    let bb = "/bin/busybox";
    exec(
        w,
        id,
        &[bb, "timeout", "3", bb, "wget", "-q", "-O", "-", url],
    )
}

/// Stops every instance of `ids` and waits for their `instance_stopped`.
async fn stop_all(w: &World, node: &berth_schemas::ids::NodeId, ids: &[(&ServiceId, &InstanceId)]) {
    for (svc, i) in ids {
        support::stop(w, node, svc, i).await;
    }
    for (svc, i) in ids {
        w.wait_events(svc, Duration::from_secs(30), |ev| {
            count_of(ev, i, "instance_stopped") == 1
        })
        .await;
    }
}

/// The network namespace the processes of running instance `id` share.
fn namespace_of_instance(id: &InstanceId) -> u64 {
    let spaces: std::collections::BTreeSet<u64> = berth_tests::agent::processes_of(&[id])
        .into_iter()
        .filter_map(berth_tests::net::namespace_of)
        .collect();
    assert_eq!(spaces.len(), 1, "{id}: {spaces:?}");
    spaces.into_iter().next().unwrap()
}

/// The open files of this process (the node runs in it) among `held`.
fn node_files(held: &[String]) -> Vec<String> {
    let mine = format!("/proc/{}/fd/", std::process::id());
    held.iter()
        .filter_map(|h| h.strip_prefix("open file "))
        .filter(|f| f.starts_with(&mine))
        .map(str::to_owned)
        .collect()
}

fn held_by_node(held: &[String]) -> usize {
    node_files(held).len()
}

/// Whether none of `files` (the node's, once on namespace `ns`) is open on
/// it any more. The files themselves are looked at, not every holder of
/// `ns`: a freed namespace's inode number is soon another's (a test's
/// running beside this one).
fn closed(files: &[String], ns: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .all(|f| std::fs::metadata(f).map_or(true, |m| m.ino() != ns))
}

/// Leases (host-local's files named after addresses) still held.
fn leases(w: &World) -> Vec<String> {
    let dir = w.node_dir().join("agent/net/ipam");
    walk(&dir)
        .into_iter()
        .filter(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<Ipv4Addr>().is_ok())
        })
        .map(|f| f.display().to_string())
        .collect()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A host outside the node: a network namespace behind a veth from the
/// node (a /30 of its own, no route to any instance subnet) serving
/// `/hello.txt` on 8080 and on 4222 (where a NATS server of the control
/// plane would listen). Removed on drop.
struct Outside {
    _lease: berth_tests::net::SubnetLease,
    ns: String,
    addr: String,
    _www: tempfile::TempDir,
}

impl Outside {
    fn start() -> Outside {
        let n = berth_tests::net::lease_subnet();
        // 10.2xx.b.0/24 leased → 10.255.b.0/30 here, unique like the lease.
        let b: u8 = n.subnet.split('.').nth(2).unwrap().parse().unwrap();
        let tag = format!("{:x}{b:02x}", std::process::id() % 0xfff);
        let (ns, host_if, peer) = (
            format!("bthout{tag}"),
            format!("bo{tag}"),
            format!("bi{tag}"),
        );
        let (host_ip, addr) = (format!("10.255.{b}.1"), format!("10.255.{b}.2"));
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("hello.txt"), "outside\n").unwrap();
        let sh = |c: &str| {
            let ok = std::process::Command::new("sh")
                .args(["-c", c])
                .status()
                .unwrap();
            assert!(ok.success(), "{c}");
        };
        sh(&format!("ip netns add {ns}"));
        let o = Outside {
            _lease: n,
            ns: ns.clone(),
            addr: addr.clone(),
            _www: www,
        };
        sh(&format!(
            "ip link add {host_if} type veth peer name {peer} netns {ns}"
        ));
        sh(&format!(
            "ip addr add {host_ip}/30 dev {host_if} && ip link set {host_if} up"
        ));
        sh(&format!(
            "ip -n {ns} addr add {addr}/30 dev {peer} && ip -n {ns} link set {peer} up && ip -n {ns} link set lo up"
        ));
        for port in [8080, 4222] {
            sh(&format!(
                "ip netns exec {ns} /bin/busybox httpd -p {port} -h {}",
                o._www.path().display()
            ));
        }
        o
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        // The httpd dies with the namespace's last process gone; the veth
        // pair goes with the namespace.
        let _ = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}",
                    ns = self.ns
                ),
            ])
            .status();
    }
}

/// An image whose environment names its port (`ENV PORT=5000`, as images
/// built for Heroku or Cloud Run do) is served there from its start, its
/// `PORT` kept, whether its program reads it or listens there anyway;
/// a service's own `PORT` still wins.
#[tokio::test]
async fn an_image_whose_environment_names_its_port_is_served_there() {
    let w = World::start().await;
    // Detection off: only the image's own word can find port 5000.
    let node = start_node(&w, fast_checks()).await;
    let owner = OwnerId::User(UserId::generate());
    let image = busybox_image(json!({
        "Cmd": ["/bin/sh"],
        "Env": ["PATH=/bin", "PORT=5000"],
    }));
    w.registry
        .push_image(REPO, "envport", &image)
        .await
        .unwrap();
    let (svc, dep) = service_of(
        &w,
        &owner,
        "envport",
        ServiceType::WebService,
        &image.digest,
    )
    .await;
    let mut fixed = spec(
        &w,
        &svc,
        &dep,
        "/bin/busybox httpd -f -p 5000 -h /app",
        Some(10000),
    );
    fixed.digest = image.digest.clone();
    let mut reads = spec(
        &w,
        &svc,
        &dep,
        "/bin/sh -c 'exec /bin/busybox httpd -f -p $PORT -h /app'",
        Some(10000),
    );
    reads.digest = image.digest.clone();
    let mut told = reads.clone();
    told.instance = InstanceId::generate();
    support::with_env(&w, &node.id, &mut told, &[("PORT", "6000")]).await;
    for s in [&fixed, &reads, &told] {
        run(&w, &node.id, s).await;
    }
    let all = [&fixed.instance, &reads.instance, &told.instance];
    let addrs = healthy(&w, &svc, &all).await;
    for addr in &addrs {
        let (status, _) = http_get(addr, "/hello.txt").await.unwrap();
        assert_eq!(status, 200, "{addr}");
    }
    let (_, env) = exec(&w, &reads.instance, &["/bin/busybox", "env"]);
    assert!(env.lines().any(|l| l == "PORT=5000"), "{env}");
    let (_, env) = exec(&w, &told.instance, &["/bin/busybox", "env"]);
    assert!(env.lines().any(|l| l == "PORT=6000"), "{env}");
    let ids = all.map(|i| (&svc, i));
    stop_all(&w, &node.id, &ids).await;
    node.stop().await;
}

#[tokio::test]
async fn fixed_port_and_exposed_port_images_are_served_with_two_instances_on_one_node() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;
    let baseline = berth_tests::net::leftovers(&w.subnet.subnet, &[]);
    let owner = OwnerId::User(UserId::generate());

    // Listens on 10000, reads no PORT: two instances on this one node.
    let (svc, dep) = service_of(&w, &owner, "fixed", ServiceType::WebService, &w.digest).await;
    let a = spec(&w, &svc, &dep, FIXED_10000, Some(10000));
    let b = spec(&w, &svc, &dep, FIXED_10000, Some(10000));
    run(&w, &node.id, &a).await;
    run(&w, &node.id, &b).await;

    // `EXPOSE 8080`, no PORT set: 8080 is served and checked.
    let exposed = busybox_image(json!({
        "Cmd": ["/bin/sh"],
        "Env": ["PATH=/bin"],
        "ExposedPorts": { "8080/tcp": {} },
    }));
    w.registry
        .push_image(REPO, "exposed", &exposed)
        .await
        .unwrap();
    let (esvc, edep) = service_of(
        &w,
        &owner,
        "exposed",
        ServiceType::WebService,
        &exposed.digest,
    )
    .await;
    let mut e = spec(
        &w,
        &esvc,
        &edep,
        "/bin/sh -c 'echo PORT=$PORT; exec /bin/busybox httpd -f -p 8080 -h /app'",
        Some(10000),
    );
    e.digest = exposed.digest.clone();
    run(&w, &node.id, &e).await;

    let addrs = healthy(&w, &svc, &[&a.instance, &b.instance]).await;
    assert_ne!(
        addrs[0], addrs[1],
        "each instance is published on its own host port"
    );
    for addr in &addrs {
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        let (status, body) = http_get(addr, "/hello.txt").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "hello\n"), "{addr}");
    }
    // Each in its own namespace: both bound 10000, and each sees `PORT`,
    // its host name and Render's platform variables: who it is and where
    // it answers (the node's services URL is `http://services.test`).
    for i in [&a.instance, &b.instance] {
        let (code, env) = exec(&w, i, &["/bin/busybox", "env"]);
        assert_eq!(code, 0, "{env}");
        let wants = [
            "PORT=10000".to_owned(),
            format!("HOSTNAME={i}"),
            "RENDER=true".to_owned(),
            "IS_PULL_REQUEST=false".to_owned(),
            format!("RENDER_SERVICE_ID={svc}"),
            format!("RENDER_INSTANCE_ID={i}"),
            "RENDER_SERVICE_NAME=fixed".to_owned(),
            "RENDER_SERVICE_TYPE=web".to_owned(),
            "RENDER_EXTERNAL_URL=http://fixed.services.test".to_owned(),
            "RENDER_EXTERNAL_HOSTNAME=fixed.services.test".to_owned(),
        ];
        for want in wants {
            assert!(env.lines().any(|l| l == want), "{want} in {env}");
        }
        assert!(
            env.lines().any(|l| l.starts_with("RENDER_CPU_COUNT=")),
            "{env}"
        );
    }
    let eaddr = healthy(&w, &esvc, &[&e.instance]).await.remove(0);
    let (status, _) = http_get(&eaddr, "/hello.txt").await.unwrap();
    assert_eq!(status, 200, "the exposed port is the one published");
    let (_, env) = exec(&w, &e.instance, &["/bin/busybox", "env"]);
    assert!(env.lines().any(|l| l == "PORT=8080"), "{env}");

    // Each in a namespace of its own, held by its processes and the
    // node's open file, never by a mount on the host's table.
    let spaces: Vec<u64> = [&a.instance, &b.instance, &e.instance]
        .into_iter()
        .map(namespace_of_instance)
        .collect();
    let host = berth_tests::net::namespace_of(std::process::id()).unwrap();
    assert!(!spaces.contains(&host), "{spaces:?}");
    assert!(spaces[0] != spaces[1] && spaces[1] != spaces[2] && spaces[0] != spaces[2]);
    let mut files = Vec::new();
    for ns in &spaces {
        let held = berth_tests::net::namespace_holders(*ns);
        assert_eq!(held_by_node(&held), 1, "{held:?}");
        assert!(!held.iter().any(|h| h.starts_with("mount")), "{held:?}");
        files.push(node_files(&held));
    }

    // Gone with their instances: rules, veths, namespaces, leases.
    let ids = [
        (&svc, &a.instance),
        (&svc, &b.instance),
        (&esvc, &e.instance),
    ];
    assert_eq!(leases(&w).len(), 3, "{:?}", leases(&w));
    stop_all(&w, &node.id, &ids).await;
    let names: Vec<String> = ids.iter().map(|(_, i)| i.to_string()).collect();
    assert_eq!(
        berth_tests::net::leftovers(&w.subnet.subnet, &names),
        baseline,
        "only the node's own chains are left while it runs"
    );
    assert!(leases(&w).is_empty(), "{:?}", leases(&w));
    for (ns, files) in spaces.iter().zip(&files) {
        assert!(closed(files, *ns), "the node still holds {files:?}");
    }
    node.stop().await;
    assert!(
        berth_tests::net::leftovers(&w.subnet.subnet, &names).is_empty(),
        "a node stopping with nothing running leaves nothing"
    );
}

/// A node restarted (an upgrade, a crash) adopts its running web
/// instances with their networks: each keeps answering on its published
/// address, is never reported unhealthy, and is still stopped cleanly by
/// the new process.
#[tokio::test]
async fn a_restarted_node_keeps_its_web_instances_reachable_on_their_addresses() {
    let w = World::start().await;
    let (node, svc, a, addr, ns) = one_web_instance(&w, "kept").await;
    node.stop().await;
    let node = start_node(&w, fast_checks()).await;
    // The new process holds the running instance's namespace again (the
    // old one's file went with it).
    let held = berth_tests::net::namespace_holders(ns);
    assert_eq!(held_by_node(&held), 1, "{held:?}");
    // Long enough for the new process to probe it several times.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let (status, body) = http_get(&addr, "/hello.txt")
            .await
            .unwrap_or_else(|e| panic!("{addr} unreachable after the node restarted: {e:#}"));
        assert_eq!((status, body.as_str()), (200, "hello\n"), "{addr}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = w.events_after(&svc, Duration::ZERO).await;
    assert_eq!(
        count_of(&events, &a.instance, "instance_unhealthy"),
        0,
        "{:?}",
        support::kinds(&events, &a.instance)
    );

    stop_gone(&w, node, &svc, &a.instance, ns).await;
}

/// A node running one web instance (listening on 10000) of a new service
/// `name`, healthy: the node, service, spec, published address and the
/// instance's network namespace.
async fn one_web_instance(
    w: &World,
    name: &str,
) -> (support::Running, ServiceId, NodeRunSpec, String, u64) {
    let node = start_node(w, fast_checks()).await;
    let owner = OwnerId::User(UserId::generate());
    let (svc, dep) = service_of(w, &owner, name, ServiceType::WebService, &w.digest).await;
    let a = spec(w, &svc, &dep, FIXED_10000, Some(10000));
    run(w, &node.id, &a).await;
    let addr = healthy(w, &svc, &[&a.instance]).await.remove(0);
    let ns = namespace_of_instance(&a.instance);
    (node, svc, a, addr, ns)
}

/// Stops `instance` and the node: its lease and namespace are gone.
async fn stop_gone(
    w: &World,
    node: support::Running,
    svc: &ServiceId,
    instance: &InstanceId,
    ns: u64,
) {
    let files = node_files(&berth_tests::net::namespace_holders(ns));
    assert_eq!(files.len(), 1, "{files:?}");
    stop_all(w, &node.id, &[(svc, instance)]).await;
    assert!(leases(w).is_empty(), "{:?}", leases(w));
    assert!(closed(&files, ns), "the node still holds {files:?}");
    node.stop().await;
}

/// A node restarted while one of its instances is down (its container
/// died with no node running): the instance is started again with the
/// address it had, in a new namespace, as a restart, and the node's record
/// of it (its health check's address) stays true: healthy again.
#[tokio::test]
async fn an_instance_that_died_while_its_node_was_down_restarts_with_its_address() {
    let w = World::start().await;
    let (node, svc, a, addr, _) = one_web_instance(&w, "downed").await;
    let ip = own_address(&w, &a.instance);
    node.stop().await;
    support::kill_container(&w, &a.instance);
    // Dead (left unreaped: the node is their reaper).
    let until = Instant::now() + Duration::from_secs(10);
    while !berth_tests::agent::processes_of(&[&a.instance])
        .into_iter()
        .all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |st| {
                st.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        })
    {
        assert!(Instant::now() < until, "the container did not die");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let node = start_node(&w, fast_checks()).await;
    support::healthy_again(&w, &svc, &a.instance).await;
    assert_eq!(own_address(&w, &a.instance), ip);
    // Probed where the node recorded it, several times: never unhealthy.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = w.events_after(&svc, Duration::ZERO).await;
    assert_eq!(
        count_of(&events, &a.instance, "instance_unhealthy"),
        0,
        "{:?}",
        support::kinds(&events, &a.instance)
    );
    let (status, body) = http_get(&addr, "/hello.txt").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello\n"), "{addr}");
    let ns = namespace_of_instance(&a.instance);
    stop_gone(&w, node, &svc, &a.instance, ns).await;
}

/// The address instance `id` has on the node's bridge (its hosts file
/// names it).
fn own_address(w: &World, id: &InstanceId) -> String {
    let (code, hosts) = exec(w, id, &["/bin/busybox", "cat", "/etc/hosts"]);
    assert_eq!(code, 0, "{hosts}");
    hosts
        .lines()
        .find_map(|l| l.strip_suffix(&format!("\t{id}")))
        .unwrap_or_else(|| panic!("{id} not in its hosts file: {hosts}"))
        .to_owned()
}

/// An instance whose namespace an earlier berth pinned with `ip netns add`
/// (a bind mount under `/run/netns`) is adopted by a restarted node: the
/// node holds the namespace by file and the mount leaves the host's table.
#[tokio::test]
async fn a_namespace_mounted_by_an_earlier_node_is_held_by_file_and_unmounted_on_adoption() {
    let w = World::start().await;
    let (node, svc, a, addr, ns) = one_web_instance(&w, "older").await;
    node.stop().await;
    // What `ip netns add` would have left for this instance.
    let pid = berth_tests::agent::processes_of(&[&a.instance])[0];
    let mounted = std::path::Path::new("/run/netns").join(a.instance.as_str());
    let out = std::process::Command::new("ip")
        .args(["netns", "attach", a.instance.as_str(), &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let held = berth_tests::net::namespace_holders(ns);
    assert!(held.iter().any(|h| h.starts_with("mount")), "{held:?}");

    let node = start_node(&w, fast_checks()).await;
    assert!(!mounted.exists(), "the mount is removed");
    let held = berth_tests::net::namespace_holders(ns);
    assert_eq!(held_by_node(&held), 1, "{held:?}");
    assert!(!held.iter().any(|h| h.starts_with("mount")), "{held:?}");
    let (status, body) = http_get(&addr, "/hello.txt").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello\n"), "{addr}");
    stop_gone(&w, node, &svc, &a.instance, ns).await;
}

#[tokio::test]
async fn instances_reach_their_owners_private_services_by_name_and_nothing_else() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;
    let (mine, theirs) = (
        OwnerId::User(UserId::generate()),
        OwnerId::User(UserId::generate()),
    );
    let (db, db_dep) = service_of(&w, &mine, "db", ServiceType::PrivateService, &w.digest).await;
    let (app, app_dep) = service_of(&w, &mine, "app", ServiceType::WebService, &w.digest).await;
    let (other, other_dep) =
        service_of(&w, &theirs, "other", ServiceType::PrivateService, &w.digest).await;
    let d = spec(&w, &db, &db_dep, FIXED_10000, Some(10000));
    let a = spec(&w, &app, &app_dep, FIXED_10000, Some(10000));
    let o = spec(&w, &other, &other_dep, FIXED_10000, Some(10000));
    for s in [&d, &a, &o] {
        run(&w, &node.id, s).await;
    }
    let db_addr = healthy(&w, &db, &[&d.instance]).await.remove(0);
    healthy(&w, &app, &[&a.instance]).await;
    let other_addr = healthy(&w, &other, &[&o.instance]).await.remove(0);
    assert!(
        !db_addr.starts_with("127.0.0.1:"),
        "a private instance is not published: {db_addr}"
    );

    // The same owner's private service answers by name.
    let (code, body) = wget(&w, &a.instance, "http://db:10000/hello.txt");
    assert_eq!((code, body.as_str()), (0, "hello\n"));

    // Another owner's private instance is up (the node reaches it) but
    // not from here, by address or by name.
    let (status, _) = http_get(&other_addr, "/hello.txt").await.unwrap();
    assert_eq!(status, 200);
    let (code, out) = wget(&w, &a.instance, &format!("http://{other_addr}/hello.txt"));
    assert_ne!(code, 0, "another owner's instance answered: {out}");
    let (code, out) = wget(&w, &o.instance, "http://db:10000/hello.txt");
    assert_ne!(code, 0, "another owner's private service answered: {out}");

    // The host's listeners: one on every address, and NATS.
    let host = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = host.local_addr().unwrap().port();
    let serving = tokio::spawn(async move {
        loop {
            if let Ok((mut s, _)) = host.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nhost\n").await;
            }
        }
    });
    let subnet: berth_agent::net::Subnet = w.subnet.parsed();
    let gateway = Ipv4Addr::from(u32::from(subnet.addr) + 1);
    let (status, body) = http_get(&format!("{gateway}:{port}"), "/").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "host\n"),
        "the host listener answers the host"
    );
    let nats_port = w.nats.url().rsplit(':').next().unwrap().to_owned();
    for url in [
        format!("http://{gateway}:{port}/"),
        format!("http://127.0.0.1:{port}/"),
        format!("http://{gateway}:{nats_port}/"),
        format!("http://127.0.0.1:{nats_port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let t0 = Instant::now();
        let (code, out) = wget(&w, &a.instance, &url);
        assert_ne!(code, 0, "{url} answered from inside an instance: {out}");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    serving.abort();

    // The rest of the network: a host of its own behind a link from the
    // node, with no route back to the instance subnet, so an answer
    // proves the instance's traffic left with the node's address.
    let outside = Outside::start();
    let (code, body) = wget(
        &w,
        &a.instance,
        &format!("http://{}:8080/hello.txt", outside.addr),
    );
    assert_eq!(
        (code, body.as_str()),
        (0, "outside\n"),
        "outbound through NAT"
    );

    let ids = [
        (&db, &d.instance),
        (&app, &a.instance),
        (&other, &o.instance),
    ];
    stop_all(&w, &node.id, &ids).await;
    node.stop().await;
    let names: Vec<String> = ids.iter().map(|(_, i)| i.to_string()).collect();
    assert!(berth_tests::net::leftovers(&w.subnet.subnet, &names).is_empty());
}

/// The control plane on another machine (a NATS server the node speaks to,
/// here a host behind a link of its own, port 4222) answers the node but
/// no instance, while that host's other ports answer instances as any
/// outside host does.
#[tokio::test]
async fn the_control_plane_on_other_machines_is_closed_to_instances() {
    let w = World::start().await;
    let outside = Outside::start();
    let control: std::net::SocketAddrV4 = format!("{}:4222", outside.addr).parse().unwrap();
    let mut checks = fast_checks();
    checks.control_plane = vec![control];
    let node = start_node(&w, checks).await;
    let owner = OwnerId::User(UserId::generate());
    let (app, app_dep) = service_of(&w, &owner, "app", ServiceType::WebService, &w.digest).await;
    let a = spec(&w, &app, &app_dep, FIXED_10000, Some(10000));
    run(&w, &node.id, &a).await;
    healthy(&w, &app, &[&a.instance]).await;

    let (status, body) = http_get(&control.to_string(), "/hello.txt").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "outside\n"),
        "the node reaches it"
    );
    let open = format!("http://{}:8080/hello.txt", outside.addr);
    let (code, body) = wget(&w, &a.instance, &open);
    assert_eq!(
        (code, body.as_str()),
        (0, "outside\n"),
        "the host's other port"
    );
    let (code, out) = wget(&w, &a.instance, &format!("http://{control}/hello.txt"));
    assert_ne!(code, 0, "the control plane answered an instance: {out}");

    stop_all(&w, &node.id, &[(&app, &a.instance)]).await;
    node.stop().await;
    assert!(berth_tests::net::leftovers(&w.subnet.subnet, &[a.instance.to_string()]).is_empty());
}

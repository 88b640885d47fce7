//! A private service across machines (SPEC §10: "reachable by the same
//! owner's instances as `<service-name>:<port>`, never by other owners'
//! instances, never publicly"), on two real machines as far as the network
//! goes: node A on the host, node B in a network namespace of its own, and
//! an outsider namespace that runs no berth at all
//! ([`berth_tests::two_machines`]).
//!
//! Owner X's private service `db-…` (busybox `httpd` on `PORT=8080`,
//! serving a token) can only be placed on node B, and X's worker, which
//! fetches `http://db-…:8080/token.txt` every half second, only on node A.
//! X's worker must get the token. Owner Y's worker, also on node A, tries
//! the name, the address X's instance has for it, and node B's address on
//! every host port the private instance could be published on (the one its
//! `instance_started` names as `published`, when it does): it must never
//! get the token. The outsider must not connect to node B's host ports.
//! Each denial has a control that the same path otherwise works (node B's
//! own listener answers Y's worker and the outsider), so it cannot pass
//! for want of a network.
//!
//! Then each node is restarted in turn (A, then B, which holds the private
//! instance; the containers keep running and are adopted): a node empties
//! and rebuilds its chains at every start, and X's worker must get the
//! token again within 15 s of the new process's start — counted are only
//! attempts that began once the new process was running, after its chains
//! were made again, never lines of before. Y must still never get it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_tests::two_machines::{
    http_get_from, service_body, started, Machine, NodeSize, TwoMachines,
};
use serde_json::{json, Value};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// Machine A offers less CPU than the private service's plan needs and
/// machine B exactly that: the private service fits only on B, and once it
/// is there B has no room for anything else, so the clients land on A.
const SIZE_A: NodeSize = NodeSize {
    cpu_millis: 3000,
    memory_mib: 16384,
};
const SIZE_B: NodeSize = NodeSize {
    cpu_millis: 4000,
    memory_mib: 16384,
};
/// 4 CPU, 8 GiB.
const DB_PLAN: &str = "pro_plus";
/// 0.5 CPU, 512 MiB.
const CLIENT_PLAN: &str = "starter";

/// The private service: the token in a file, served on `$PORT`.
const DB: &str = r#"
mkdir -p /tmp/www && echo "$TOKEN" > /tmp/www/token.txt && exec busybox httpd -f -p "$PORT" -h /tmp/www
"#;

/// Owner X's worker: the private service by name, twice a second, with
/// when each attempt began and ended (`at=<start>-<end>`, the host's
/// `/proc/uptime`: instances have no time namespace) and what its
/// `/etc/hosts` says of the name.
const CLIENT_X: &str = r#"
n=0
while :; do
  n=$((n+1))
  h=$(busybox grep -w "$NAME" /etc/hosts | busybox head -n 1)
  read s _ </proc/uptime
  if r=$(busybox timeout 3 busybox wget -qO- "http://$NAME:8080/token.txt" 2>&1); then
    read e _ </proc/uptime
    echo "x-ok $n at=$s-$e [$(echo $r)] hosts=[$(echo $h)]"
    # Once: a port the service does not serve on is refused, not sent on
    # to the port it serves.
    if [ -z "$other" ]; then
      other=1
      if o=$(busybox timeout 3 busybox nc "$NAME" 9999 </dev/null 2>&1); then
        echo "x-other-port open [$(echo $o)]"
      else
        echo "x-other-port closed [$(echo $o)]"
      fi
    fi
  else
    read e _ </proc/uptime
    echo "x-fail $n at=$s-$e [$(echo $r)] hosts=[$(echo $h)]"
  fi
  sleep 0.5
done
"#;

/// Owner Y's worker: the name, the addresses X's instances have for it
/// (`VIPS`), node B's address on each candidate host port (`PORTS`, twenty
/// at a time), then the control: node B's own listener (`CONTROL`).
const CLIENT_Y: &str = r#"
try() {
  if r=$(busybox timeout 3 busybox wget -qO- "$2" 2>&1); then
    echo "y-hit $1 [$(echo $r)]"
  else
    echo "y-miss $1 [$(echo $r)]"
  fi
}
n=0
while :; do
  n=$((n+1))
  try name "http://$NAME:8080/token.txt"
  for a in $VIPS; do try "vip $a" "http://$a:8080/token.txt"; done
  i=0
  for p in $PORTS; do
    (if r=$(busybox timeout 3 busybox wget -qO- "http://$NODE_B:$p/token.txt" 2>/dev/null); then echo "y-hit $NODE_B:$p [$(echo $r)]"; fi) &
    i=$((i+1))
    [ $((i % 20)) -eq 0 ] && wait
  done
  wait
  if busybox timeout 3 busybox wget -qO- "http://$CONTROL/healthz" >/dev/null 2>&1; then
    echo "y-control ok $n"
  else
    echo "y-control fail $n"
  fi
  echo "y-round $n"
  sleep 0.5
done
"#;

/// A name part no other run uses (service names are per installation, but
/// a name that is not in `/etc/hosts` goes to the machine's DNS).
fn tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// Waits until `service`'s first instance has started and checks that it
/// was placed on, and started on, `machine` (every placement of it, as the
/// log and the API say): a wrong placement fails here, loudly. Returns its
/// `instance_started` data.
async fn started_on(
    m: &TwoMachines,
    key: &str,
    service: &str,
    what: &str,
    machine: Machine,
) -> Value {
    let want = m.node_id(machine).unwrap();
    let nodes = format!(
        "node A is {:?}, node B is {:?}",
        m.node_id(Machine::A),
        m.node_id(Machine::B)
    );
    let within = Duration::from_secs(60);
    let deadline = Instant::now() + within;
    loop {
        m.assert_all_running();
        let events = m.service_events(service).await;
        for e in events.iter().filter(|e| e["type"] == "instance_scheduled") {
            assert_eq!(
                e["data"]["node"], want,
                "{what} was placed on the wrong node ({nodes}): {e}"
            );
        }
        if let Some(s) = started(&events).first() {
            assert_eq!(
                s["node"], want,
                "{what} started on the wrong node ({nodes}): {s}"
            );
            let listed = m.instances(key, service).await;
            assert!(
                !listed.is_empty() && listed.iter().all(|i| i["nodeId"] == want),
                "{what}'s instances per the API are not all on {machine:?} ({nodes}): {listed:?}"
            );
            return (*s).clone();
        }
        let placement = events.iter().find(|e| e["type"] == "placement_blocked");
        assert!(
            Instant::now() < deadline,
            "{what} not started within {within:?} (placement blocked: {placement:?}):\n{events:#?}\n{}",
            m.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits for an `instance_healthy` of `service`.
async fn healthy(m: &TwoMachines, service: &str, what: &str) {
    let within = Duration::from_secs(30);
    let deadline = Instant::now() + within;
    loop {
        let events = m.service_events(service).await;
        if events.iter().any(|e| e["type"] == "instance_healthy") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not healthy within {within:?}:\n{events:#?}\n{}",
            m.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Lines of `service`'s output containing `text`, waiting until there are
/// at least `n` (or `within` passes: then whatever there is).
async fn lines_within(
    m: &TwoMachines,
    (key, owner): (&str, &str),
    service: &str,
    text: &str,
    n: usize,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let lines = m
            .log_lines(key, owner, service, text)
            .await
            .unwrap_or_else(|e| panic!("logs of {service}: {e:#}"));
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The addresses `/etc/hosts` lines (`hosts=[<address> <names>]` in the
/// worker's output) give, each once.
fn addresses_in_hosts(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split("hosts=[").nth(1)?.split_whitespace().next())
        .map(|a| a.trim_end_matches(']').to_owned())
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The host's seconds since boot: the clock of `at=` in X's worker's
/// lines.
fn uptime() -> f64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// When an attempt of X's worker began and ended (`at=<start>-<end>`).
fn attempt_times(line: &str) -> Option<(f64, f64)> {
    let at = line.split(" at=").nth(1)?.split_whitespace().next()?;
    let (start, end) = at.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?))
}

/// What a node logs once its agent is up: its chains emptied and made
/// again, the instances it kept adopted with their rules, the directory it
/// saved applied again (`services/node/src/lib.rs`).
const NODE_RUNNING: &str = "node running";

/// Restarts `machine`'s node and checks that owner X's worker (`x`'s
/// `client_x`) gets `token` again within 15 s of the new process's start:
/// at least two successes of attempts that began after the new process
/// logged it was running — so after it had emptied its chains; what the
/// old process's rules let through, and every line printed before the
/// restart, do not count.
async fn token_again_after_restart(
    m: &TwoMachines,
    x: (&str, &str),
    client_x: &str,
    token: &str,
    machine: Machine,
) {
    let within = Duration::from_secs(15);
    let ok = format!("[{token}]");
    let runs_before = m.node_log(machine).matches(NODE_RUNNING).count();
    assert!(
        runs_before >= 1,
        "node {machine:?} never logged {NODE_RUNNING:?}: what the restart is timed by\n{}",
        m.log_tails()
    );
    // Every success so far: none of them counts after the restart. The
    // worker got the token before it (the check starts from a road that
    // works).
    let seen: std::collections::BTreeSet<String> = m
        .log_lines(x.0, x.1, client_x, &ok)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        !seen.is_empty(),
        "owner X's worker never got the token before node {machine:?}'s restart"
    );
    let last_before = seen
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .max();
    let (status, stopped) = m.restart(machine).await;
    let spawned = Instant::now();
    let spawned_up = uptime();
    let deadline = spawned + within;
    // When the new process was seen running (host uptime, and since its
    // start): later than it was, never earlier.
    let mut running: Option<(f64, Duration)> = None;
    let mut fresh: Vec<(f64, f64, String)> = Vec::new();
    loop {
        if running.is_none() && m.node_log(machine).matches(NODE_RUNNING).count() > runs_before {
            running = Some((uptime(), spawned.elapsed()));
        }
        if let Some((since, _)) = running {
            fresh = m
                .log_lines(x.0, x.1, client_x, &ok)
                .await
                .unwrap()
                .into_iter()
                .filter(|l| !seen.contains(l))
                .filter_map(|l| {
                    let (start, end) = attempt_times(&l)?;
                    (start >= since && end <= spawned_up + within.as_secs_f64())
                        .then_some((start, end, l))
                })
                .collect();
        }
        if fresh.len() >= 2 || Instant::now() >= deadline {
            break;
        }
        let poll = if running.is_some() { 200 } else { 20 };
        tokio::time::sleep(Duration::from_millis(poll)).await;
    }
    if fresh.len() < 2 {
        let tried = m.log_lines(x.0, x.1, client_x, "x-").await.unwrap();
        let log = m.node_log(machine);
        let lines: Vec<&str> = log.lines().collect();
        panic!(
            "owner X's worker did not get the token twice within {within:?} of node {machine:?}'s \
             restart (started at host uptime {spawned_up}; seen running at {running:?}, as host \
             uptime and time since its start); successes counted: {:?}\nits last attempts \
             (newest first):\n{}\nnode {machine:?}'s last lines:\n{}",
            fresh.iter().map(|f| &f.2).collect::<Vec<_>>(),
            tried
                .iter()
                .take(12)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            lines[lines.len().saturating_sub(25)..].join("\n")
        );
    }
    m.assert_all_running();
    let first = fresh.iter().map(|f| f.1).fold(f64::INFINITY, f64::min);
    let mut attempts: Vec<&str> = fresh
        .iter()
        .filter_map(|f| f.2.split_whitespace().nth(1))
        .collect();
    attempts.sort_by_key(|n| n.parse::<u64>().unwrap_or(0));
    println!(
        "(node {machine:?} restarted: the old process exited after {stopped:.1?} ({status}), \
         the new one was running after {:.1?}; X's worker got the token again {:.1}s after \
         its start; successes counted: attempts {attempts:?}, the last before the restart \
         {last_before:?})",
        running.map(|r| r.1).unwrap_or_default(),
        first - spawned_up,
    );
}

/// A second owner with an API key of its own: `(owner id, API key)`.
async fn second_owner(m: &TwoMachines) -> (String, String) {
    let key = berth_runtime::SecretKey::from_base64(&m.secret_key).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let api_url = format!("http://127.0.0.1:{}", m.api_port);
    let done = berth_api::bootstrap_store(m.store(), &key, elsewhere.path(), &api_url)
        .await
        .unwrap();
    let creds: Value = serde_json::from_slice(&std::fs::read(&done.path).unwrap()).unwrap();
    let owner = creds["ownerId"].as_str().unwrap().to_owned();
    assert_ne!(owner, m.owner, "the second owner is a new one");
    (owner, creds["apiKey"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_service_on_another_machine_is_its_owners_alone() {
    berth_tests::runc::require_root_and_runc();
    let t0 = Instant::now();
    let m = TwoMachines::start(BERTH, SIZE_A, SIZE_B).await;
    println!("(both machines up after {:.1?})", t0.elapsed());
    let config = json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]});
    let image = m
        .push(
            "app/tools",
            "v1",
            &berth_tests::agent::busybox_image(config),
        )
        .await;
    let tag = tag();
    let name = format!("db-{tag}");
    let token = format!("token-{tag}-{}", tag.chars().rev().collect::<String>());
    let x = (m.api_key.as_str(), m.owner.as_str());

    // Owner X's private service: it fits on machine B only.
    let db_body = service_body(
        "private_service",
        &name,
        &image,
        DB_PLAN,
        DB,
        &[("PORT", "8080"), ("TOKEN", &token)],
    );
    let db = m.create_service(x.0, db_body).await;
    let db_started = started_on(&m, x.0, &db, "the private service", Machine::B).await;
    healthy(&m, &db, "the private service").await;
    // The API says where its owner's instances reach it: its name and the
    // port it serves on, once live.
    let want = format!("{name}:8080");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = format!("/v1/services/{db}");
        let got = m.call(x.0, reqwest::Method::GET, &path, None).await;
        let url = got
            .as_ref()
            .map(|(_, v)| v["serviceDetails"]["url"].clone());
        if url.as_ref().and_then(|u| u.as_str()) == Some(want.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "{want} never said: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Where other machines reach it, once nodes publish private instances
    // (`<advertise>:<host port>`); until then every host port of node B
    // is a candidate.
    let published = db_started["published"].as_str().map(str::to_owned);
    let node_b = m.advertise(Machine::B).to_owned();
    let candidates: Vec<u16> = match &published {
        Some(p) => {
            let (host, port) = p.rsplit_once(':').unwrap();
            assert_eq!(
                host, node_b,
                "the private instance is published at node B's address: {db_started}"
            );
            let port: u16 = port.parse().unwrap();
            assert!(
                m.ports(Machine::B).contains(&port),
                "published on a port of node B's range {:?}: {db_started}",
                m.ports(Machine::B)
            );
            vec![port]
        }
        None => m.ports(Machine::B).collect(),
    };
    println!(
        "(private service on B after {:.1?}: {db_started}; published {published:?})",
        t0.elapsed()
    );

    // Owner X's client: B is full, so it lands on A.
    let client_x = m
        .create_service(
            x.0,
            service_body(
                "background_worker",
                &format!("client-x-{tag}"),
                &image,
                CLIENT_PLAN,
                CLIENT_X,
                &[("NAME", &name)],
            ),
        )
        .await;
    started_on(&m, x.0, &client_x, "owner X's worker", Machine::A).await;
    let x_started = Instant::now();
    // What X's instance has for the name (its /etc/hosts), for Y to try:
    // waited for a while (the entry may come after the first attempt),
    // within X's own minute.
    let hosts_deadline = Instant::now() + Duration::from_secs(15);
    let (tried, mut vips) = loop {
        let tried = m.log_lines(x.0, x.1, &client_x, "x-").await.unwrap();
        let vips = addresses_in_hosts(&tried);
        let got = tried.iter().any(|l| l.starts_with("x-ok"));
        if !vips.is_empty() || got || Instant::now() >= hosts_deadline {
            break (tried, vips);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        !tried.is_empty(),
        "owner X's worker printed nothing within 15 s\n{}",
        m.log_tails()
    );
    println!("(X's worker on A; its address for {name}: {vips:?})");
    // Y guesses the private instance's own address too.
    if let Some(addr) = db_started["addr"].as_str() {
        vips.push(addr.rsplit_once(':').unwrap().0.to_owned());
    }

    // Owner Y's client, on A too.
    let y = second_owner(&m).await;
    let y = (y.1.as_str(), y.0.as_str());
    let ports = candidates
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let control = m.node_b_http().to_string();
    let client_y = m
        .create_service(
            y.0,
            service_body(
                "background_worker",
                &format!("client-y-{tag}"),
                &image,
                CLIENT_PLAN,
                CLIENT_Y,
                &[
                    ("NAME", &name),
                    ("VIPS", &vips.join(" ")),
                    ("NODE_B", &node_b),
                    ("PORTS", &ports),
                    ("CONTROL", &control),
                ],
            ),
        )
        .await;
    started_on(&m, y.0, &client_y, "owner Y's worker", Machine::A).await;
    // Y's instance is Y's: the first owner does not see it.
    let theirs = m
        .call(
            x.0,
            reqwest::Method::GET,
            &format!("/v1/services/{client_y}"),
            None,
        )
        .await;
    assert!(matches!(theirs, Some((404, _))), "{theirs:?}");

    // Owner X's worker reaches the private service by name, across
    // machines. Not asserted yet: the denials below run either way.
    let x_deadline = x_started + Duration::from_secs(60);
    let x_got = loop {
        let ok = m
            .log_lines(x.0, x.1, &client_x, &format!("[{token}]"))
            .await
            .unwrap();
        if !ok.is_empty() {
            break Ok(ok);
        }
        if Instant::now() >= x_deadline {
            let tried = m.log_lines(x.0, x.1, &client_x, "x-").await.unwrap();
            break Err(tried);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "(X's worker {} after {:.1?})",
        if x_got.is_ok() {
            "got the token"
        } else {
            "did not get the token"
        },
        x_started.elapsed()
    );

    // Owner Y: rounds ran, the control passed, and nothing was ever got.
    let rounds = lines_within(&m, y, &client_y, "y-round", 3, Duration::from_secs(45)).await;
    assert!(
        rounds.len() >= 3,
        "owner Y's worker did not finish three rounds: {rounds:?}\n{:?}\n{}",
        m.log_lines(y.0, y.1, &client_y, "").await,
        m.log_tails()
    );
    let control_ok = m
        .log_lines(y.0, y.1, &client_y, "y-control ok")
        .await
        .unwrap();
    assert!(
        !control_ok.is_empty(),
        "owner Y's worker never reached node B's own listener {control}: the denials \
         below would prove nothing\n{:?}",
        m.log_lines(y.0, y.1, &client_y, "y-control").await
    );
    let by_name = m
        .log_lines(y.0, y.1, &client_y, "y-miss name")
        .await
        .unwrap();
    assert!(!by_name.is_empty(), "owner Y's worker never tried the name");
    let hits = m.log_lines(y.0, y.1, &client_y, "y-hit").await.unwrap();
    let leaked = m.log_lines(y.0, y.1, &client_y, &token).await.unwrap();
    assert!(
        hits.is_empty() && leaked.is_empty(),
        "owner Y's instance reached owner X's private service: {hits:?} {leaked:?}"
    );
    let misses = m.log_lines(y.0, y.1, &client_y, "y-miss").await.unwrap();
    println!(
        "(Y: {} rounds, no hits; its latest misses: {:?})",
        rounds.len(),
        &misses[..misses.len().min(1 + vips.len())]
    );

    // The outsider: node B's own listener answers it (control), node B's
    // host ports do not accept its connections at all.
    let (outsider, outsider_addr) = m.outsider();
    let control_answer = http_get_from(
        outsider,
        &[m.node_b_http()],
        "/healthz",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        control_answer.iter().all(|(_, a)| a
            .as_ref()
            .is_ok_and(|t| t.lines().next().is_some_and(|l| l.contains(" 200 ")))),
        "the outsider {outsider_addr} does not reach node B's own listener: {control_answer:?}"
    );
    let targets: Vec<SocketAddr> = candidates
        .iter()
        .map(|p| format!("{node_b}:{p}").parse().unwrap())
        .collect();
    let answers = http_get_from(outsider, &targets, "/token.txt", Duration::from_secs(3)).await;
    let reached: Vec<String> = answers
        .iter()
        .filter_map(|(t, a)| a.as_ref().ok().map(|a| format!("{t}: {a}")))
        .collect();
    assert!(
        reached.is_empty(),
        "the outsider {outsider_addr} connected to node B's host ports: {reached:?}"
    );
    println!("(outsider refused on {} port(s) of node B)", answers.len());

    m.assert_all_running();
    // Owner X's own reach, which needs private services across machines.
    if let Err(tried) = x_got {
        let events = m.service_events(&db).await;
        panic!(
            "owner X's worker on node A never got the token from its private service {name} \
             on node B within 60 s; its last attempts (newest first):\n{}\n\
             the private service's instance_started: {db_started}\nits events: {:?}",
            tried.iter().take(8).cloned().collect::<Vec<_>>().join("\n"),
            events.iter().map(|e| &e["type"]).collect::<Vec<_>>()
        );
    }

    // Only the port it serves on leads to it from the other machine: a
    // connection to another is refused at once.
    let other = lines_within(&m, x, &client_x, "x-other-port", 1, Duration::from_secs(10)).await;
    assert!(
        other.len() == 1 && other[0].contains("closed") && other[0].contains("refused"),
        "another port of {name}: {other:?}"
    );

    // The roads between nodes across a restart of either node.
    for machine in [Machine::A, Machine::B] {
        token_again_after_restart(&m, x, &client_x, &token, machine).await;
    }
    // Owner Y never got the token, also while the nodes restarted: once
    // a round of its worker has ended since, every probe it began meanwhile
    // has said how it went.
    let ended = m
        .log_lines(y.0, y.1, &client_y, "y-round")
        .await
        .unwrap()
        .len();
    let rounds_after = lines_within(
        &m,
        y,
        &client_y,
        "y-round",
        ended + 1,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        rounds_after.len() > ended,
        "owner Y's worker ended no round after the restarts: {rounds_after:?}\n{}",
        m.log_tails()
    );
    let hits = m.log_lines(y.0, y.1, &client_y, "y-hit").await.unwrap();
    let leaked = m.log_lines(y.0, y.1, &client_y, &token).await.unwrap();
    assert!(
        hits.is_empty() && leaked.is_empty(),
        "owner Y's instance reached owner X's private service across the restarts: \
         {hits:?} {leaked:?}"
    );
    println!(
        "(Y: {} rounds in all, still no hits; done after {:.1?})",
        rounds_after.len(),
        t0.elapsed()
    );
}

//! The NATS users berth generates, on a real nats-server of each version the
//! suite uses: an anonymous client is refused, each role can do its job
//! (a node's log lines are kept and read by the control plane), and each
//! forbidden action is refused by the server (a permissions violation
//! reported to the client) with no effect.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use berth_eventlog::{EventStore, NewEvent, StoreConfig, Version};
use berth_runtime::nats_auth::{authorization_block, Creds, Role};
use berth_schemas::events::{ApiKeyCreated, InstanceCountChanged};
use berth_schemas::ids::{
    ApiKeyId, DomainId, InstanceId, IntegrationId, NodeId, OwnerId, ServiceId, UserId,
};
use berth_schemas::logs::{LogLine, Stream as LogStream};
use berth_schemas::subjects::CommandKind;
use berth_schemas::{Actor, AggregateId, Subjects};
use berth_tests::{NatsServer, NatsVersion};
use futures::StreamExt;

/// A client that records the errors the server reports to it.
struct Client {
    nats: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Client {
    async fn connect(url: &str, creds: &Creds) -> Client {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        let options = creds
            .connect_options(async_nats::ConnectOptions::new())
            .request_timeout(Some(Duration::from_secs(2)))
            .event_callback(move |event| {
                let seen = seen.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        seen.lock().unwrap().push(e.to_string());
                    }
                }
            });
        let nats = options.connect(url).await.unwrap();
        Client { nats, errors }
    }

    /// Waits for the server to report a permissions violation naming `subject`.
    async fn refused(&self, subject: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.errors.lock().unwrap().iter().any(|e| {
                let e = e.to_lowercase();
                e.contains("permissions violation") && e.contains(&subject.to_lowercase())
            });
            if found {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no permissions violation for {subject}; errors: {:?}",
                self.errors.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn js(&self) -> jetstream::Context {
        jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(self.nats.clone())
    }
}

struct Installation {
    server: NatsServer,
    subjects: Subjects,
    control: Creds,
    operator: Creds,
    node_a: Creds,
    node_b: Creds,
    integration: Creds,
    owner_a: OwnerId,
    owner_b: OwnerId,
}

impl Installation {
    fn start(version: NatsVersion) -> Installation {
        let subjects = Subjects::new(&berth_tests::unique_prefix()).unwrap();
        let owner_a = OwnerId::User(UserId::generate());
        let owner_b = OwnerId::User(UserId::generate());
        let control = Creds::generate(&Role::Control, &subjects);
        let operator = Creds::generate(&Role::Operator, &subjects);
        let node_a = Creds::generate(&Role::Node(NodeId::generate()), &subjects);
        let node_b = Creds::generate(&Role::Node(NodeId::generate()), &subjects);
        let integration = Creds::generate(
            &Role::Integration {
                id: IntegrationId::generate(),
                owner: owner_a.clone(),
            },
            &subjects,
        );
        let users: Vec<_> = [&control, &operator, &node_a, &node_b, &integration]
            .iter()
            .map(|c| c.server_user(&subjects).unwrap())
            .collect();
        let server = NatsServer::start_with(version, &authorization_block(&users)).unwrap();
        Installation {
            server,
            subjects,
            control,
            operator,
            node_a,
            node_b,
            integration,
            owner_a,
            owner_b,
        }
    }

    async fn client(&self, creds: &Creds) -> Client {
        Client::connect(&self.server.url(), creds).await
    }

    async fn store(&self, client: &Client) -> EventStore {
        EventStore::open(
            client.nats.clone(),
            self.subjects.clone(),
            StoreConfig::default(),
        )
        .await
        .unwrap()
    }
}

fn node_of(creds: &Creds) -> NodeId {
    creds.node_id.clone().unwrap()
}

async fn anonymous_is_refused(i: &Installation) {
    let anonymous = async_nats::ConnectOptions::new()
        .connect(i.server.url())
        .await;
    assert!(anonymous.is_err(), "an anonymous client connected");
    let mut wrong = i.control.clone();
    wrong.password.push('x');
    let wrong = wrong
        .connect_options(async_nats::ConnectOptions::new())
        .connect(i.server.url())
        .await;
    assert!(wrong.is_err(), "a wrong password connected");
}

async fn scenario(version: NatsVersion) {
    let i = Installation::start(version);
    anonymous_is_refused(&i).await;

    // The control plane provisions and uses the log, queues and snapshots.
    let control = i.client(&i.control).await;
    let store = i.store(&control).await;
    store
        .provision_logs(&berth_eventlog::logs::LogLimits::default())
        .await
        .expect("the control plane provisions the logs stream");
    let service = ServiceId::generate();
    let node_a = node_of(&i.node_a);
    let node_b = node_of(&i.node_b);
    let queue_b = Subjects::node_queue(&node_b);
    store
        .enqueue(&queue_b, "k", "work of b".into(), "w1")
        .await
        .unwrap();

    // A node opens the store (stream infos only), appends facts to a
    // service, and takes work from its own queue only.
    let node = i.client(&i.node_a).await;
    let node_store = i.store(&node).await;
    let fact = NewEvent::new(
        InstanceCountChanged { from: 1, to: 1 },
        Actor::system("node"),
    );
    node_store
        .append(
            &AggregateId::Service(service.clone()),
            Version::NEW,
            vec![fact],
            "fact-1",
        )
        .await
        .expect("a node appends facts to a service");
    let queue_a = i.subjects.work(&Subjects::node_queue(&node_a));
    let own = node
        .js()
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                durable_name: Some(Subjects::node_consumer(&node_a)),
                filter_subject: queue_a.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
            i.subjects.work_stream(),
        )
        .await;
    assert!(own.is_ok(), "a node creates its own consumer: {own:?}");
    // It follows the services (where other nodes' private instances are)
    // through an ephemeral ordered consumer, as its read models do …
    let events = node
        .js()
        .get_stream_no_info(i.subjects.events_stream())
        .await
        .unwrap();
    let followed = events
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: i.subjects.aggregate_kind("service"),
            ..Default::default()
        })
        .await
        .expect("a node follows the services");
    let mut messages = followed.messages().await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), messages.next())
        .await
        .expect("the fact is delivered")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.subject.as_str(),
        i.subjects.aggregate(&AggregateId::Service(service.clone()))
    );
    // … but makes no durable consumer on the log.
    let durable = node
        .js()
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                durable_name: Some("kept".into()),
                filter_subject: i.subjects.aggregate_kind("service"),
                ..Default::default()
            },
            i.subjects.events_stream(),
        )
        .await;
    assert!(
        durable.is_err(),
        "a node made a durable consumer on the log"
    );

    // ... and nothing else.
    let owner_event = NewEvent::new(
        ApiKeyCreated {
            key: ApiKeyId::generate(),
            label: "x".into(),
            sha256: "0".repeat(64),
        },
        Actor::system("node"),
    );
    let owner_id = AggregateId::Owner(i.owner_a.clone());
    let forged = node_store
        .append(
            &owner_id,
            Version::NEW,
            vec![owner_event.clone()],
            "forged-1",
        )
        .await;
    assert!(forged.is_err(), "a node appended an owner event");
    node.refused(&i.subjects.aggregate(&owner_id)).await;
    let cred = format!("{}.evt.credential.rgc-x", i.subjects.prefix());
    node.nats.publish(cred.clone(), "x".into()).await.unwrap();
    node.refused(&cred).await;
    // Nor a custom domain's claim.
    let domain = i
        .subjects
        .aggregate(&AggregateId::Domain(DomainId::of_name("www.example.com")));
    node.nats.publish(domain.clone(), "x".into()).await.unwrap();
    node.refused(&domain).await;

    let consumer_b = Subjects::node_consumer(&node_b);
    let other = node
        .js()
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                durable_name: Some(consumer_b.clone()),
                filter_subject: i.subjects.work(&queue_b),
                ..Default::default()
            },
            i.subjects.work_stream(),
        )
        .await;
    assert!(other.is_err(), "a node created another node's consumer");
    node.refused(&format!(
        "CONSUMER.CREATE.{}.{consumer_b}",
        i.subjects.work_stream()
    ))
    .await;
    let get = node
        .js()
        .get_stream_no_info(i.subjects.work_stream())
        .await
        .unwrap()
        .get_raw_message(1)
        .await;
    assert!(get.is_err(), "a node read the work stream by sequence");
    node.refused(&format!("STREAM.MSG.GET.{}", i.subjects.work_stream()))
        .await;
    let live = node
        .nats
        .subscribe(format!("{}.work.>", i.subjects.prefix()))
        .await;
    drop(live);
    node.refused(&format!("{}.work.>", i.subjects.prefix()))
        .await;
    for stream in [
        i.subjects.events_stream(),
        i.subjects.work_stream(),
        i.subjects.logs_stream(),
    ] {
        assert!(node.js().delete_stream(&stream).await.is_err());
        node.refused(&format!("STREAM.DELETE.{stream}")).await;
        let purge = node
            .nats
            .request(format!("$JS.API.STREAM.PURGE.{stream}"), "".into())
            .await;
        assert!(purge.is_err());
        node.refused(&format!("STREAM.PURGE.{stream}")).await;
    }
    node.nats
        .publish(
            i.subjects.command(&i.owner_a, CommandKind::Scale),
            "{}".into(),
        )
        .await
        .unwrap();
    node.refused(&i.subjects.command(&i.owner_a, CommandKind::Scale))
        .await;

    // The router's certificate store: the control plane provisions and
    // uses its bucket; a node can neither write nor read it.
    let bucket = i.subjects.certificate_bucket();
    control
        .js()
        .create_stream(jetstream::stream::Config {
            name: i.subjects.certificate_stream(),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            ..Default::default()
        })
        .await
        .expect("the control plane provisions the certificate bucket");
    let certs = control
        .js()
        .get_key_value(&bucket)
        .await
        .expect("the control plane opens the certificate bucket");
    certs
        .put("cert.shop.example.com", "sealed".into())
        .await
        .expect("the control plane stores a certificate");
    let forged = format!("$KV.{bucket}.cert.shop.example.com");
    node.nats
        .publish(forged.clone(), "forged".into())
        .await
        .unwrap();
    node.refused(&forged).await;
    assert_eq!(
        certs.get("cert.shop.example.com").await.unwrap().as_deref(),
        Some(&b"sealed"[..]),
        "a node's write reached the certificate bucket"
    );
    assert!(
        node.js().get_key_value(&bucket).await.is_err(),
        "a node opened the certificate bucket"
    );

    // Instance logs: a node publishes its lines on core NATS, the control
    // plane keeps and reads them; the node cannot read them back (nor
    // purge or delete them: above).
    let line = LogLine {
        service: service.clone(),
        instance: Some(InstanceId::generate()),
        stream: LogStream::Stdout,
        line: "hello from a node".into(),
        time: chrono::Utc::now(),
    };
    // Published by `who`, then kept: the stream's lines once it holds `n`.
    let publish_kept = |who: &async_nats::Client, l: &LogLine, n: usize| {
        let (who, payload) = (who.clone(), serde_json::to_vec(l).unwrap());
        let (store, service, subject) = (&store, &service, i.subjects.logs(&service));
        async move {
            who.publish(subject, payload.into()).await.unwrap();
            who.flush().await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let lines = berth_tests::eventlog::kept_logs(store, service)
                        .await
                        .expect("the control plane reads the logs stream");
                    if lines.len() == n {
                        return lines;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .expect("the line kept")
        }
    };
    let kept = publish_kept(&node.nats, &line, 1).await;
    assert_eq!(kept, vec![line.clone()]);
    // The control plane (its scheduler) says a deploy's outcome there too.
    let deploy_line = LogLine {
        instance: None,
        stream: LogStream::System,
        line: "==> Your service is live".into(),
        ..line.clone()
    };
    let kept = publish_kept(&control.nats, &deploy_line, 2).await;
    assert_eq!(kept, vec![line, deploy_line]);
    let logs = i.subjects.logs_stream();
    let reader = node
        .js()
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                filter_subject: i.subjects.logs(&service),
                ..Default::default()
            },
            logs.clone(),
        )
        .await;
    assert!(reader.is_err(), "a node read the kept logs");
    node.refused(&format!("CONSUMER.CREATE.{logs}")).await;
    let get = node
        .js()
        .get_stream_no_info(logs.clone())
        .await
        .unwrap()
        .get_raw_message(1)
        .await;
    assert!(get.is_err(), "a node read the kept logs by sequence");
    node.refused(&format!("STREAM.MSG.GET.{logs}")).await;
    let live = node.nats.subscribe(i.subjects.logs_all()).await;
    drop(live);
    node.refused(&i.subjects.logs_all()).await;

    // Commands run in instances: the control plane asks a node on its
    // own subject and the node answers; a node may neither receive
    // another node's nor send any.
    let mut asked = node.nats.subscribe(i.subjects.exec(&node_a)).await.unwrap();
    node.nats.flush().await.unwrap();
    let answering = node.nats.clone();
    let answer = tokio::spawn(async move {
        let msg = asked.next().await.unwrap();
        answering
            .publish(msg.reply.unwrap(), "ran".into())
            .await
            .unwrap();
        answering.flush().await.unwrap();
    });
    // (The new subscription may take a moment to count as interest.)
    let mut reply = None;
    for _ in 0..50 {
        match control
            .nats
            .request(i.subjects.exec(&node_a), "x".into())
            .await
        {
            Ok(r) => {
                reply = Some(r);
                break;
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let reply = reply.expect("the node answers");
    assert_eq!(&reply.payload[..], b"ran");
    answer.await.unwrap();
    let theirs = node.nats.subscribe(i.subjects.exec(&node_b)).await;
    drop(theirs);
    node.refused(&i.subjects.exec(&node_b)).await;
    node.nats
        .publish(i.subjects.exec(&node_b), "x".into())
        .await
        .unwrap();
    node.refused(&i.subjects.exec(&node_b)).await;

    // Terminals: the node hears openings and typing for its own
    // instances only, and sends its own sessions' output only.
    let session = "0123456789abcdef0123456789abcdef";
    let mut opens = node
        .nats
        .subscribe(i.subjects.shell(&node_a))
        .await
        .unwrap();
    let mut typed = node
        .nats
        .subscribe(i.subjects.shell_inputs(&node_a))
        .await
        .unwrap();
    let mut shown = control
        .nats
        .subscribe(i.subjects.shell_output(&node_a, session))
        .await
        .unwrap();
    node.nats.flush().await.unwrap();
    control.nats.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    control
        .nats
        .publish(i.subjects.shell(&node_a), "open".into())
        .await
        .unwrap();
    control
        .nats
        .publish(i.subjects.shell_input(&node_a, session), "typed".into())
        .await
        .unwrap();
    control.nats.flush().await.unwrap();
    let within = Duration::from_secs(5);
    let got = tokio::time::timeout(within, opens.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"open");
    let got = tokio::time::timeout(within, typed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"typed");
    node.nats
        .publish(i.subjects.shell_output(&node_a, session), "shown".into())
        .await
        .unwrap();
    node.nats.flush().await.unwrap();
    let got = tokio::time::timeout(within, shown.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"shown");
    let theirs = node.nats.subscribe(i.subjects.shell_inputs(&node_b)).await;
    drop(theirs);
    node.refused(&i.subjects.shell_inputs(&node_b)).await;
    let theirs = node.nats.subscribe(i.subjects.shell(&node_b)).await;
    drop(theirs);
    node.refused(&i.subjects.shell(&node_b)).await;
    node.nats
        .publish(i.subjects.shell_output(&node_b, session), "x".into())
        .await
        .unwrap();
    node.refused(&i.subjects.shell_output(&node_b, session))
        .await;
    node.nats
        .publish(i.subjects.shell_input(&node_a, session), "x".into())
        .await
        .unwrap();
    node.refused(&i.subjects.shell_input(&node_a, session))
        .await;

    // The control plane may not delete or purge streams either.
    for stream in [
        i.subjects.events_stream(),
        i.subjects.work_stream(),
        i.subjects.logs_stream(),
    ] {
        assert!(control.js().delete_stream(&stream).await.is_err());
        control.refused(&format!("STREAM.DELETE.{stream}")).await;
        let purge = control
            .nats
            .request(format!("$JS.API.STREAM.PURGE.{stream}"), "".into())
            .await;
        assert!(purge.is_err());
        control.refused(&format!("STREAM.PURGE.{stream}")).await;
    }
    // Everything is still there: B's work item and the node's fact.
    let mut work = control
        .js()
        .get_stream(i.subjects.work_stream())
        .await
        .unwrap();
    assert_eq!(work.info().await.unwrap().state.messages, 1);
    let mut events = control
        .js()
        .get_stream(i.subjects.events_stream())
        .await
        .unwrap();
    assert_eq!(events.info().await.unwrap().state.messages, 1);
    let mut kept_logs = control
        .js()
        .get_stream(i.subjects.logs_stream())
        .await
        .unwrap();
    assert_eq!(kept_logs.info().await.unwrap().state.messages, 2);

    // An integration: its owner's commands and events, nothing else.
    let integration = i.client(&i.integration).await;
    let mut commands = control
        .nats
        .subscribe(format!("{}.cmd.*.*", i.subjects.prefix()))
        .await
        .unwrap();
    let mut events_a = integration
        .nats
        .subscribe(i.subjects.owner_events(&i.owner_a))
        .await
        .unwrap();
    let events_b = integration
        .nats
        .subscribe(i.subjects.owner_events(&i.owner_b))
        .await
        .unwrap();
    drop(events_b);
    integration
        .refused(&i.subjects.owner_events(&i.owner_b))
        .await;
    integration.nats.flush().await.unwrap();
    let theirs = i.subjects.command(&i.owner_b, CommandKind::Scale);
    integration
        .nats
        .publish(theirs.clone(), "b".into())
        .await
        .unwrap();
    integration.refused(&theirs).await;
    let mine = i.subjects.command(&i.owner_a, CommandKind::Restart);
    integration
        .nats
        .publish(mine.clone(), "a".into())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), commands.next())
        .await
        .unwrap()
        .unwrap();
    // B's command never arrived; A's did.
    assert_eq!(got.subject.as_str(), mine);
    let other_service = ServiceId::generate();
    control
        .nats
        .publish(
            i.subjects.service_events(&i.owner_a, &other_service),
            "for a".into(),
        )
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), events_a.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&seen.payload[..], b"for a");
    assert!(integration
        .js()
        .delete_stream(i.subjects.events_stream())
        .await
        .is_err());
    integration
        .refused(&format!("STREAM.DELETE.{}", i.subjects.events_stream()))
        .await;
    integration
        .nats
        .publish(i.subjects.aggregate(&owner_id), "x".into())
        .await
        .unwrap();
    integration.refused(&i.subjects.aggregate(&owner_id)).await;
    // Custom domain claims are not an integration's to write or read.
    integration
        .nats
        .publish(domain.clone(), "x".into())
        .await
        .unwrap();
    integration.refused(&domain).await;
    let claims = integration
        .nats
        .subscribe(i.subjects.aggregate_kind("domain"))
        .await;
    drop(claims);
    integration
        .refused(&i.subjects.aggregate_kind("domain"))
        .await;
    let replies = integration.nats.subscribe("_INBOX.>").await;
    drop(replies);
    integration.refused("_INBOX.>").await;

    // The operator reads service events (pull progress); it publishes
    // nothing, and reads logs only through the API, owner-scoped.
    let operator = i.client(&i.operator).await;
    let _events = operator
        .nats
        .subscribe(i.subjects.aggregate_kind("service"))
        .await
        .unwrap();
    let live_logs = operator.nats.subscribe(i.subjects.logs_all()).await;
    drop(live_logs);
    operator.refused(&i.subjects.logs_all()).await;
    operator
        .nats
        .publish(
            i.subjects.command(&i.owner_a, CommandKind::Deploy),
            "x".into(),
        )
        .await
        .unwrap();
    operator
        .refused(&i.subjects.command(&i.owner_a, CommandKind::Deploy))
        .await;
    operator
        .nats
        .publish(i.subjects.exec(&node_a), "x".into())
        .await
        .unwrap();
    operator.refused(&i.subjects.exec(&node_a)).await;
    operator
        .nats
        .publish(i.subjects.shell(&node_a), "x".into())
        .await
        .unwrap();
    operator.refused(&i.subjects.shell(&node_a)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), commands.next())
            .await
            .is_err(),
        "a refused command reached the API"
    );
}

#[tokio::test]
async fn roles_are_enforced_on_nats_2_9() {
    scenario(NatsVersion::Legacy).await;
}

#[tokio::test]
async fn roles_are_enforced_on_current_nats() {
    scenario(NatsVersion::Modern).await;
}

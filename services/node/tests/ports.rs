//! The node's port bookkeeping: every port handed to an instance placed on
//! this node counts as taken until the instance is stopped, including after
//! a restart of the node (placements are read back from disk).

use std::collections::HashSet;

use berth_node::{Placement, Reporter};
use berth_schemas::ids::{DeployId, InstanceId, NodeId, ServiceId};
use berth_tests::eventlog::open_store;
use berth_tests::{NatsServer, NatsVersion};

fn placement(port: Option<u16>) -> Placement {
    Placement {
        service: ServiceId::generate(),
        deploy: DeployId::generate(),
        digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .to_owned(),
        addr: port.map(|p| format!("127.0.0.1:{p}")),
        published: None,
        port,
        check: None,
        detect: false,
        private: false,
    }
}

#[tokio::test]
async fn ports_of_placed_instances_are_in_use_across_a_restart() {
    let nats = NatsServer::start(NatsVersion::Legacy).unwrap();
    let store = open_store(&nats.connect().await.unwrap(), 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeId::generate();
    let reporter = Reporter::new(store.clone(), node.clone(), dir.path().into()).unwrap();
    assert!(reporter.ports_in_use().is_empty());

    let (a, b, worker) = (
        InstanceId::generate(),
        InstanceId::generate(),
        InstanceId::generate(),
    );
    reporter.place(&a, placement(Some(20_001))).unwrap();
    reporter.place(&b, placement(Some(20_002))).unwrap();
    // A background worker listens on nothing: it holds no port.
    reporter.place(&worker, placement(None)).unwrap();
    let want: HashSet<u16> = [20_001, 20_002].into();
    assert_eq!(reporter.ports_in_use(), want);

    // A restarted node (a new reporter on the same directory) sees the same.
    let again = Reporter::new(store, node, dir.path().into()).unwrap();
    assert_eq!(again.ports_in_use(), want);
}

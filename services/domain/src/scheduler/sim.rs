//! A small world for the scheduler's tests: a service built through the
//! service aggregate's own `decide`, instance facts, and a `carry_out` in
//! which every new instance comes up healthy at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_schemas::events::{InstanceHealthy, InstanceScheduled, InstanceStarted};
use berth_schemas::ids::{DeployId, InstanceId, NodeId, OwnerId, UserId};
use berth_schemas::model::{DeployStatus, DeployTrigger, ResolvedImage, Sealed, ServiceType};
use berth_schemas::Event;
use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::aggregate::Ctx;
use crate::service::{apply_at, decide, Command, CreateService, DeployRequest};

pub(crate) fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn id_body(n: u8) -> String {
    format!("{}{}", "a".repeat(19), char::from(b'a' + n))
}

pub(crate) fn node_id(n: u8) -> NodeId {
    format!("nod-{}", id_body(n)).parse().unwrap()
}

pub(crate) fn deploy_id(n: u8) -> DeployId {
    format!("dep-{}", id_body(n)).parse().unwrap()
}

pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

pub(crate) fn node(n: u8, cpu: u32, mem: u32) -> NodeCapacity {
    NodeCapacity {
        id: node_id(n),
        cpu_millis: cpu,
        memory_mib: mem,
        used_cpu: 0,
        used_mem: 0,
        lost: false,
    }
}

/// A service, the clock, and the ids the scheduler will hand out.
pub(crate) struct Svc {
    pub state: ServiceState,
    pub now: DateTime<Utc>,
    pub ids: SequentialIds,
}

impl Svc {
    /// A web service with `n` instances whose first deploy (`deploy_id(0)`)
    /// has started at `t0`.
    pub fn web(n: u32) -> Self {
        let owner = OwnerId::User("usr-aaaaaaaaaaaaaaaaaaaa".parse::<UserId>().unwrap());
        let sealed = Sealed {
            kid: "k1".into(),
            ciphertext: "hook".into(),
        };
        let mut c = CreateService::new(
            owner,
            "app",
            ServiceType::WebService,
            "ghcr.io/acme/app:v1",
            sealed,
            deploy_id(0),
        );
        c.num_instances = Some(n);
        let mut s = Svc {
            state: ServiceState::default(),
            now: t0(),
            ids: SequentialIds(0),
        };
        s.run(Command::Create(Box::new(c)));
        s
    }

    /// A web service with a disk (one instance) whose first deploy has
    /// started at `t0`.
    pub fn with_disk() -> Self {
        let mut s = Svc {
            state: ServiceState::default(),
            now: t0(),
            ids: SequentialIds(0),
        };
        let mut c = Self::web(1).create_command();
        c.disk = Some(berth_schemas::model::Disk {
            id: "dsk-aaaaaaaaaaaaaaaaaaaa".parse().unwrap(),
            name: "data".into(),
            mount_path: "/var/data".into(),
            size_gb: 1,
        });
        s.run(Command::Create(Box::new(c)));
        s
    }

    /// The create command `web` ran (its config, as a command again).
    fn create_command(&self) -> CreateService {
        let c = self.state.config.clone().unwrap();
        let mut create = CreateService::new(
            c.owner,
            &c.name,
            c.service_type,
            &c.image,
            c.hook_key,
            deploy_id(0),
        );
        create.num_instances = Some(c.num_instances);
        create
    }

    pub fn run(&mut self, command: Command) {
        let c = format!("{command:?}");
        let events = decide(&self.state, command, &Ctx::default())
            .unwrap_or_else(|e| panic!("{c} refused: {e}"));
        self.apply(&events);
    }

    pub fn apply(&mut self, events: &[Event]) {
        for e in events {
            self.state = apply_at(std::mem::take(&mut self.state), e, Some(self.now));
        }
    }

    /// Resolved to `d`, pulled, update started: the instances may start.
    pub fn updating(&mut self, deploy: &DeployId, d: &str) {
        self.run(Command::RecordResolved {
            deploy: deploy.clone(),
            image: ResolvedImage {
                digest: d.to_owned(),
                index_digest: None,
                compressed_size: 1,
            },
        });
        self.run(Command::RecordUpdateStarted {
            deploy: deploy.clone(),
        });
    }

    pub fn request(&mut self, n: u8) -> DeployId {
        let id = deploy_id(n);
        self.run(Command::RequestDeploy(DeployRequest::new(
            id.clone(),
            DeployTrigger::Api,
        )));
        id
    }

    /// An instance of `deploy` placed, started and (if `healthy`) healthy.
    pub fn instance(&mut self, deploy: &DeployId, node: u8, d: &str, healthy: bool) -> InstanceId {
        let instance = self.ids.next_instance();
        let mut events = vec![
            Event::InstanceScheduled(InstanceScheduled {
                instance: instance.clone(),
                deploy: deploy.clone(),
                node: node_id(node),
                digest: d.to_owned(),
            }),
            Event::InstanceStarted(InstanceStarted {
                instance: instance.clone(),
                node: node_id(node),
                digest: d.to_owned(),
                addr: None,
                published: None,
            }),
        ];
        if healthy {
            events.push(Event::InstanceHealthy(InstanceHealthy {
                instance: instance.clone(),
            }));
        }
        self.apply(&events);
        instance
    }

    pub fn reconcile(&mut self, view: &ClusterView) -> Plan {
        reconcile(&self.state, view, self.now, &mut self.ids)
    }

    /// [`Svc::carry_out`], placing through the service's own rules (as
    /// the scheduler does), so the disk's rules apply; new instances come
    /// up healthy.
    pub fn carry_out_placing(&mut self, plan: &Plan) -> Result<(), crate::error::DomainError> {
        for a in &plan.actions {
            if let Action::Schedule {
                instance,
                deploy,
                node,
                digest,
            } = a
            {
                let events = decide(
                    &self.state,
                    Command::Place {
                        scheduled: vec![InstanceScheduled {
                            instance: instance.clone(),
                            deploy: deploy.clone(),
                            node: node.clone(),
                            digest: digest.clone(),
                        }],
                        rescheduled: vec![],
                    },
                    &Ctx::default(),
                )?;
                self.apply(&events);
                self.apply(&[
                    Event::InstanceStarted(InstanceStarted {
                        instance: instance.clone(),
                        node: node.clone(),
                        digest: digest.clone(),
                        addr: None,
                        published: None,
                    }),
                    Event::InstanceHealthy(InstanceHealthy {
                        instance: instance.clone(),
                    }),
                ]);
            } else {
                self.carry_out(&Plan {
                    actions: vec![a.clone()],
                    ..Plan::default()
                });
            }
        }
        Ok(())
    }

    /// Carries a plan out in a world where every new instance comes up
    /// healthy on its node at once.
    pub fn carry_out(&mut self, plan: &Plan) {
        for a in &plan.actions {
            match a {
                Action::MarkLive { deploy, digest } => self.run(Command::RecordLive {
                    deploy: deploy.clone(),
                    digest: digest.clone(),
                }),
                Action::FailDeploy { deploy, reason } => self.run(Command::RecordFailed {
                    deploy: deploy.clone(),
                    status: DeployStatus::UpdateFailed,
                    reason: reason.clone(),
                }),
                Action::Schedule {
                    instance,
                    node,
                    digest,
                    ..
                }
                | Action::Reschedule {
                    replacement: instance,
                    to_node: node,
                    digest,
                    ..
                } => {
                    let started = Event::InstanceStarted(InstanceStarted {
                        instance: instance.clone(),
                        node: node.clone(),
                        digest: digest.clone(),
                        addr: None,
                        published: None,
                    });
                    let healthy = Event::InstanceHealthy(InstanceHealthy {
                        instance: instance.clone(),
                    });
                    self.apply(&[a.event(), started, healthy]);
                }
                Action::Stop { .. } => self.apply(&[a.event()]),
                Action::ReportBlocked(b) => self.run(Command::RecordPlacementBlocked(b.clone())),
            }
        }
    }
}

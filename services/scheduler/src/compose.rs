//! A node's `RunInstance` / `RunOnce` item, composed: the run spec of one
//! instance of a deploy, with the secrets it needs sealed to the node it
//! goes to (`berth_runtime::node_key`). The service keeps its env values,
//! and the credential its token, sealed with the installation key; here
//! they are opened and sealed again to that node's public key, bound to
//! the node, service and instance. Nodes never hold the installation key.
//!
//! A node whose registration carries no public key yet gets nothing: the
//! item waits and the pass is retried, never sealed with the installation
//! key instead. A credential that is gone, not the owner's or made for
//! another registry travels without a login; the node, which checks the
//! same, records the pull `unauthorized` with the reason.

use std::time::Duration;

use berth_domain::credential::{self, CredentialState};
use berth_domain::reference::Reference;
use berth_domain::service::{Deploy, ServiceConfig};
use berth_runtime::node_key::ForNode;
use berth_schemas::commands::NodeRunSpec;
use berth_schemas::ids::{InstanceId, NodeId};
use berth_schemas::model::ServiceType;
use berth_schemas::AggregateId;

use crate::drive::Pass;
use crate::SchedulerError;

/// How soon an item that could not be sealed is tried again.
pub(crate) const SEAL_RETRY: Duration = Duration::from_secs(2);

/// What composing an item gave.
pub(crate) enum Composed {
    Ready(Box<NodeRunSpec>),
    /// Not now (the node has published no key yet, or a secret did not
    /// open): pass again after this.
    Wait(Duration),
    /// Never: the deploy's image does not parse (logged).
    Skip,
}

impl Pass<'_> {
    /// The run spec of `instance` of deploy `d` on `node`, its secrets
    /// sealed to `node`.
    pub(crate) async fn run_spec(
        &self,
        cfg: &ServiceConfig,
        d: &Deploy,
        instance: &InstanceId,
        digest: &str,
        node: &NodeId,
    ) -> Result<Composed, SchedulerError> {
        let reference = match Reference::parse(&d.image) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(service.id = %self.service, deploy.id = %d.id, error = %e, "deploy image unparsable");
                return Ok(Composed::Skip);
            }
        };
        let Some(to) = self.inner.cluster.node_key(node).await? else {
            tracing::info!(service.id = %self.service, node.id = %node, instance.id = %instance, "node has published no key yet; its work waits");
            return Ok(Composed::Wait(SEAL_RETRY));
        };
        let seal = ForNode {
            key: &self.inner.key,
            node,
            to: &to,
        };
        let env = match seal.seal_env(self.service, instance, &cfg.env_vars) {
            Ok(env) => env,
            Err(e) => {
                // Sealed with another installation key, or damaged: nothing
                // starts without its env.
                tracing::error!(service.id = %self.service, instance.id = %instance, error = %e, "the service's env cannot be opened; its instance waits");
                return Ok(Composed::Wait(SEAL_RETRY));
            }
        };
        let files = match seal.seal_files(self.service, instance, &cfg.secret_files) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(service.id = %self.service, instance.id = %instance, error = %e, "the service's secret files cannot be opened; its instance waits");
                return Ok(Composed::Wait(SEAL_RETRY));
            }
        };
        let login = match &d.credential {
            None => None,
            Some(id) => {
                let (state, _) = self
                    .inner
                    .store
                    .state::<CredentialState, _>(
                        &AggregateId::Credential(id.clone()),
                        credential::fold,
                    )
                    .await
                    .map_err(SchedulerError::store)?;
                match state.usable(id, &cfg.owner, reference.domain()) {
                    Err(reason) => {
                        tracing::info!(service.id = %self.service, credential.id = %id, reason = %reason, "credential not usable; the node will report the pull unauthorized");
                        None
                    }
                    Ok(c) => {
                        match seal.seal_login(self.service, instance, id, &c.username, &c.token) {
                            Ok(login) => Some(login),
                            Err(e) => {
                                tracing::error!(service.id = %self.service, credential.id = %id, error = %e, "credential token cannot be opened; the pull will be unauthorized");
                                None
                            }
                        }
                    }
                }
            }
        };
        let port = match cfg.service_type {
            ServiceType::WebService | ServiceType::PrivateService => {
                Some(self.inner.opts.default_port)
            }
            _ => None,
        };
        Ok(Composed::Ready(Box::new(NodeRunSpec {
            service: self.service.clone(),
            deploy: d.id.clone(),
            instance: instance.clone(),
            image: reference.name(),
            digest: digest.to_owned(),
            credential: d.credential.clone(),
            login,
            env,
            files,
            command: cfg.docker_command.clone(),
            port,
            plan: Some(cfg.plan.clone()),
            shutdown_delay_secs: u32::from(cfg.shutdown_delay_secs),
            disk_restore: self.state.disk_snapshots.restore.clone(),
        })))
    }
}

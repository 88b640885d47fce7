//! Operations on an existing service, shared by the HTTP API and the bus
//! commands (SPEC §6, §7, §11, §12): update, scale, restart, suspend,
//! resume, deploy, cancel, rollback, hook-key regeneration, cron runs, and
//! the entry of the deploy hook (whose write path is [`crate::hooks`]).
//!
//! Each is one decision on the service's subject. The owner check happens
//! inside that decision (against the state the append is conditional on),
//! so another owner's service is "not found" and nothing is appended.
//! Bus commands come from integrations bound to one owner: they act with
//! [`Scope::Bus`] of that owner, and another owner's service is not found.

use berth_domain::service::{self, DeployRequest, ServiceState};
use berth_domain::{Ctx, DomainError};
use berth_eventlog::Executed;
use berth_runtime::Secret;
use berth_schemas::events::ServiceSettings;
use berth_schemas::ids::{CredentialId, CronRunId, DeployId, JobId, OwnerId, ServiceId};
use berth_schemas::model::{seal_context, DeployTrigger, Plan, Sealed};
use berth_schemas::{Actor, AggregateId, Event};

use crate::failpoint::failpoint;
use crate::hooks::HookError;

/// Environment variables of an update, in clear until sealed here.
type ClearEnv = Option<std::collections::BTreeMap<String, Secret>>;
use crate::{exec, Caller, Ingress, IngressError};

/// On whose behalf an operation runs.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// An operator (API key): only the owner's services exist for it.
    Owner(&'a Caller),
    /// An integration on the bus, bound to one owner by its NATS
    /// credentials (the owner is in the command's subject): only that
    /// owner's services exist for it; actor `bus`.
    Bus(&'a OwnerId),
}

impl Scope<'_> {
    fn owner(&self) -> Option<&OwnerId> {
        match self {
            Scope::Owner(c) => Some(&c.owner),
            Scope::Bus(o) => Some(o),
        }
    }

    fn actor(&self) -> Actor {
        match self {
            Scope::Owner(c) => c.actor.clone(),
            Scope::Bus(_) => Actor::Bus,
        }
    }
}

fn not_found() -> DomainError {
    DomainError::NotFound {
        what: "service",
        id: String::new(),
    }
}

impl Ingress {
    /// Decides `command` on a service in `scope` with `idempotency_key`;
    /// returns the state after it.
    pub async fn service_command(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        idempotency_key: &str,
        command: service::Command,
    ) -> Result<ServiceState, IngressError> {
        let done = self
            .execute_service(scope, id, idempotency_key, command)
            .await?;
        Ok(std::sync::Arc::unwrap_or_clone(done.state))
    }

    /// [`Ingress::service_command`], with what was appended (for a
    /// duplicate: what the first try appended).
    async fn execute_service(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        idempotency_key: &str,
        command: service::Command,
    ) -> Result<Executed<ServiceState>, IngressError> {
        let owner = scope.owner();
        exec::run_when::<service::Service>(
            &self.store,
            &AggregateId::Service(id.clone()),
            idempotency_key,
            &scope.actor(),
            |s: &ServiceState| match &s.config {
                Some(c) if owner.is_none_or(|o| *o == c.owner) => Ok(Some(command.clone())),
                _ => Err(not_found()),
            },
        )
        .await
    }

    /// Scales to `num_instances`.
    pub async fn scale(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        num_instances: u32,
        request: &str,
    ) -> Result<ServiceState, IngressError> {
        let key = format!("scale-{id}-{request}");
        let state = self
            .service_command(scope, id, &key, service::Command::Scale { num_instances })
            .await?;
        tracing::info!(service.id = %id, num_instances, "service scaled");
        Ok(state)
    }

    /// Sets (`Some`) or removes (`None`) the service's autoscaling.
    pub async fn set_autoscaling(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        to: Option<berth_schemas::model::AutoscalingConfig>,
        request: &str,
    ) -> Result<ServiceState, IngressError> {
        let key = format!("autoscaling-{id}-{request}");
        let on = to.as_ref().map(|c| (c.enabled, c.min, c.max));
        let state = self
            .service_command(scope, id, &key, service::Command::SetAutoscaling(to))
            .await?;
        tracing::info!(service.id = %id, autoscaling = ?on, "autoscaling set");
        Ok(state)
    }

    /// Renames, grows or moves the service's disk (each optional).
    pub async fn update_disk(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        change: (Option<String>, Option<String>, Option<u32>),
        request: &str,
    ) -> Result<ServiceState, IngressError> {
        let key = format!("disk-{id}-{request}");
        let (name, mount_path, size_gb) = change;
        let state = self
            .service_command(
                scope,
                id,
                &key,
                service::Command::UpdateDisk {
                    name,
                    mount_path,
                    size_gb,
                },
            )
            .await?;
        tracing::info!(service.id = %id, "disk updated");
        Ok(state)
    }

    /// Gives a service without a disk one (a new id); a deploy brings it
    /// to the instance. `request` makes a retry of the same request add
    /// it once.
    pub async fn add_disk(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        disk: crate::NewDisk,
        request: &str,
    ) -> Result<ServiceState, IngressError> {
        let key = format!("disk-add-{id}-{request}");
        let disk = berth_schemas::model::Disk {
            id: berth_schemas::ids::DiskId::generate(),
            name: disk.name,
            mount_path: disk.mount_path,
            size_gb: disk.size_gb,
        };
        let deploy = DeployId::generate();
        let state = self
            .service_command(scope, id, &key, service::Command::AddDisk { disk, deploy })
            .await?;
        tracing::info!(service.id = %id, "disk added");
        Ok(state)
    }

    /// Removes the service's disk and its data; a deploy starts an
    /// instance without it.
    pub async fn remove_disk(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        request: &str,
    ) -> Result<ServiceState, IngressError> {
        let key = format!("disk-remove-{id}-{request}");
        let deploy = DeployId::generate();
        let state = self
            .service_command(scope, id, &key, service::Command::RemoveDisk { deploy })
            .await?;
        tracing::info!(service.id = %id, "disk removed");
        Ok(state)
    }

    /// Asks the disk's node for a snapshot of the service's disk now.
    pub async fn request_disk_snapshot(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        request: &str,
    ) -> Result<ServiceState, IngressError> {
        let key = format!("disk-snapshot-{id}-{request}");
        self.service_command(scope, id, &key, service::Command::RequestDiskSnapshot)
            .await
    }

    /// Sets the service's disk back to its snapshot `snapshot`; a deploy
    /// starts the instance on the restored disk.
    pub async fn restore_disk_snapshot(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        snapshot: berth_schemas::ids::DiskSnapshotKey,
        request: &str,
    ) -> Result<ServiceState, IngressError> {
        let key = format!("disk-restore-{id}-{request}");
        let deploy = DeployId::generate();
        let state = self
            .service_command(
                scope,
                id,
                &key,
                service::Command::RestoreDiskSnapshot {
                    key: snapshot.clone(),
                    deploy,
                },
            )
            .await?;
        tracing::info!(service.id = %id, snapshot = %snapshot, "disk restore asked for");
        Ok(state)
    }

    /// Restarts every instance.
    pub async fn restart(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        request: &str,
    ) -> Result<ServiceState, IngressError> {
        let key = format!("restart-{id}-{request}");
        self.service_command(scope, id, &key, service::Command::Restart)
            .await
    }

    /// Suspends the service.
    pub async fn suspend(&self, caller: &Caller, id: &ServiceId) -> Result<(), IngressError> {
        let key = format!("suspend-{id}-{}", DeployId::generate());
        self.service_command(Scope::Owner(caller), id, &key, service::Command::Suspend)
            .await
            .map(|_| ())
    }

    /// Resumes the service; its deploy (trigger `service_resumed`) starts.
    pub async fn resume(&self, caller: &Caller, id: &ServiceId) -> Result<(), IngressError> {
        let deploy = DeployId::generate();
        let key = format!("resume-{id}-{deploy}");
        self.service_command(
            Scope::Owner(caller),
            id,
            &key,
            service::Command::Resume { deploy },
        )
        .await
        .map(|_| ())
    }

    /// Requests a deploy in `scope` (trigger `api`), optionally of another
    /// tag or digest of the service's repository. Returns the deploy and
    /// the service's state after it (what the API shows, without a reload).
    pub async fn deploy(
        &self,
        scope: Scope<'_>,
        id: &ServiceId,
        image: Option<&str>,
        request: Option<&str>,
    ) -> Result<(DeployId, ServiceState), IngressError> {
        let deploy = DeployId::generate();
        let req = match image {
            Some(i) => DeployRequest::with_image(deploy.clone(), DeployTrigger::Api, i),
            None => DeployRequest::new(deploy.clone(), DeployTrigger::Api),
        };
        // A bus request id makes a republished command act once.
        let key = match request {
            Some(r) => format!("deploy-{id}-{r}"),
            None => format!("deploy-{deploy}"),
        };
        let done = self
            .execute_service(scope, id, &key, service::Command::RequestDeploy(req))
            .await?;
        // A republished command answers the deploy its first try created:
        // the one in that append, not the service's newest (another
        // deploy may have come in between).
        let created = match done.appended.as_ref().filter(|a| a.duplicate) {
            None => deploy,
            Some(first) => first
                .events
                .iter()
                .find_map(|e| match &e.event {
                    Event::DeployCreated(c) => Some(c.deploy.clone()),
                    _ => None,
                })
                .ok_or_else(|| {
                    IngressError::Store("the first try's append holds no deploy".to_owned())
                })?,
        };
        let state = std::sync::Arc::unwrap_or_clone(done.state);
        tracing::info!(service.id = %id, deploy.id = %created, "deploy requested");
        Ok((created, state))
    }

    /// Cancels a deploy of the caller's service.
    pub async fn cancel_deploy(
        &self,
        caller: &Caller,
        id: &ServiceId,
        deploy: &DeployId,
    ) -> Result<ServiceState, IngressError> {
        let key = format!("cancel-{deploy}");
        self.service_command(
            Scope::Owner(caller),
            id,
            &key,
            service::Command::CancelDeploy {
                deploy: deploy.clone(),
            },
        )
        .await
    }

    /// Rolls back to `target`'s recorded digest (trigger `rollback`).
    /// Returns the new deploy and the service's state after it.
    pub async fn rollback(
        &self,
        caller: &Caller,
        id: &ServiceId,
        target: &DeployId,
    ) -> Result<(DeployId, ServiceState), IngressError> {
        let deploy = DeployId::generate();
        let key = format!("deploy-{deploy}");
        let req = DeployRequest::rollback(deploy.clone(), target.clone());
        let current = self.show_service(caller, id).await?;
        let state = if current.deploy(target).is_none() && current.forgotten_deploys > 0 {
            // An older deploy than the service holds: decided on a fold
            // of its whole history, which is then let go.
            let aggregate = AggregateId::Service(id.clone());
            let owner = caller.owner.clone();
            let done = exec::run_when::<service::ServiceHistory>(
                &self.store,
                &aggregate,
                &key,
                &Scope::Owner(caller).actor(),
                |s: &service::EveryDeploy| match &s.0.config {
                    Some(c) if c.owner == owner => {
                        Ok(Some(service::Command::RequestDeploy(req.clone())))
                    }
                    _ => Err(not_found()),
                },
            )
            .await;
            self.store.forget_state::<service::EveryDeploy>(&aggregate);
            done?;
            // What callers get back: the state as the service holds it.
            self.show_service(caller, id).await?
        } else {
            self.service_command(
                Scope::Owner(caller),
                id,
                &key,
                service::Command::RequestDeploy(req),
            )
            .await?
        };
        tracing::info!(service.id = %id, deploy.id = %deploy, rollback_of = %target, "rollback requested");
        Ok((deploy, state))
    }

    /// Changes a service's settings; `env_vars` in clear are sealed here. A
    /// change that needs a redeploy starts one. A new name is claimed on the
    /// owner first (409 when taken) and the old one released after the
    /// service took the new one. A new credential must be the caller's and
    /// the image reachable with it (422 otherwise, SPEC §4); it is attached
    /// before the service names it and the old one detached after, so a
    /// credential in use can never be removed. A crash between those steps
    /// is finished or undone by [`crate::repair`].
    pub async fn update_service(
        &self,
        caller: &Caller,
        id: &ServiceId,
        mut settings: ServiceSettings,
        env_vars: ClearEnv,
    ) -> Result<ServiceState, IngressError> {
        let Some(wanted) = settings.credential.take() else {
            return self.update_named(caller, id, settings, env_vars).await;
        };
        let current = self.show_service(caller, id).await?;
        let Some(cfg) = current.config.as_ref() else {
            return Err(IngressError::not_found("service", id));
        };
        if wanted == cfg.credential {
            return self.update_named(caller, id, settings, env_vars).await;
        }
        if let Some(new) = &wanted {
            // The caller's own, or 404.
            self.show_credential(caller, new).await?;
        }
        let image = settings.image.clone().unwrap_or_else(|| cfg.image.clone());
        self.verify(caller, &image, wanted.clone()).await?;
        let (old, tag) = (cfg.credential.clone(), DeployId::generate());
        if let Some(new) = &wanted {
            if let Err(e) = self.attach(caller, id, new, &format!("update-{tag}")).await {
                // A refusal appended nothing; anything else may have landed.
                if !matches!(e, IngressError::Rejected(_)) {
                    self.detach_logged(caller, id, new, &format!("update-undo-{tag}"))
                        .await;
                }
                return Err(e);
            }
        }
        failpoint("service-credential:after-attach");
        settings.credential = Some(wanted.clone());
        match self.update_named(caller, id, settings, env_vars).await {
            Ok(state) => {
                failpoint("service-credential:after-update");
                if let Some(old) = &old {
                    self.detach_logged(caller, id, old, &format!("update-{tag}"))
                        .await;
                }
                tracing::info!(service.id = %id, "service credential changed");
                Ok(state)
            }
            Err(e) => {
                if let Some(new) = &wanted {
                    self.detach_logged(caller, id, new, &format!("update-undo-{tag}"))
                        .await;
                }
                Err(e)
            }
        }
    }

    async fn detach_logged(&self, caller: &Caller, id: &ServiceId, cred: &CredentialId, why: &str) {
        if let Err(e) = self.detach(caller, id, cred, why).await {
            tracing::error!(service.id = %id, credential.id = %cred, error = %e, "could not detach the credential");
        }
    }

    /// [`Ingress::update_service`] past the credential: a rename claims the
    /// new name first.
    async fn update_named(
        &self,
        caller: &Caller,
        id: &ServiceId,
        mut settings: ServiceSettings,
        env_vars: ClearEnv,
    ) -> Result<ServiceState, IngressError> {
        let rename = match settings.name.take() {
            None => None,
            Some(new) => {
                let current = self.show_service(caller, id).await?;
                let old = current
                    .config
                    .as_ref()
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                (new != old).then_some((current, old, new))
            }
        };
        let Some((current, old, new)) = rename else {
            return self.update_settings(caller, id, settings, env_vars).await;
        };
        // Every field rule (the name's grammar among them) before the claim.
        settings.name = Some(new.clone());
        service::decide(
            &current,
            service::Command::Update {
                settings: Box::new(settings.clone()),
                deploy: DeployId::generate(),
            },
            &Ctx::default(),
        )?;
        let tag = DeployId::generate();
        let key = format!("service-rename-{id}-{tag}-claim");
        self.set_name(&caller.owner, &new, id, true, &key, &caller.actor)
            .await?;
        failpoint("service-rename:after-claim");
        match self.update_settings(caller, id, settings, env_vars).await {
            Ok(state) => {
                failpoint("service-rename:after-update");
                let why = format!("rename-{tag}");
                if let Err(e) = self.release_name(caller, id, &old, &why).await {
                    tracing::error!(service.id = %id, name = %old, error = %e, "renamed, but the old name could not be released");
                }
                tracing::info!(service.id = %id, from = %old, to = %new, "service renamed");
                Ok(state)
            }
            Err(e) => {
                let why = format!("rename-undo-{tag}");
                if let Err(u) = self.release_name(caller, id, &new, &why).await {
                    tracing::error!(service.id = %id, name = %new, error = %u, "could not release the new name after a failed rename");
                }
                Err(e)
            }
        }
    }

    /// [`Ingress::update_service`] for settings on the service alone.
    async fn update_settings(
        &self,
        caller: &Caller,
        id: &ServiceId,
        mut settings: ServiceSettings,
        env_vars: ClearEnv,
    ) -> Result<ServiceState, IngressError> {
        if let Some(vars) = env_vars {
            let mut sealed = berth_schemas::model::EnvVars::new();
            for (name, value) in &vars {
                sealed.insert(
                    name.clone(),
                    self.key.seal(value, &seal_context::env_var(id, name))?,
                );
            }
            settings.env_vars = Some(sealed);
        }
        let deploy = DeployId::generate();
        let key = format!("update-{id}-{deploy}");
        self.service_command(
            Scope::Owner(caller),
            id,
            &key,
            service::Command::Update {
                settings: Box::new(settings),
                deploy,
            },
        )
        .await
    }

    /// Replaces the deploy hook key; the old URL stops working. Returns the
    /// new key in clear, to be shown once.
    pub async fn regenerate_hook_key(
        &self,
        caller: &Caller,
        id: &ServiceId,
    ) -> Result<Secret, IngressError> {
        let hook = crate::services::hook_key();
        let sealed = self.key.seal(&hook, &seal_context::hook_key(id))?;
        let key = format!(
            "hook-key-{id}-{}",
            sealed
                .ciphertext
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(32)
                .collect::<String>()
        );
        self.service_command(
            Scope::Owner(caller),
            id,
            &key,
            service::Command::RegenerateHookKey { hook_key: sealed },
        )
        .await?;
        tracing::info!(service.id = %id, "deploy hook key regenerated");
        Ok(hook)
    }

    /// The service's current hook key in clear (for `berth hook url`).
    pub async fn hook_key(&self, caller: &Caller, id: &ServiceId) -> Result<Secret, IngressError> {
        let state = self.show_service(caller, id).await?;
        let sealed = state
            .config
            .as_ref()
            .map(|c| c.hook_key.clone())
            .ok_or_else(|| IngressError::not_found("service", id))?;
        Ok(self.key.open(&sealed, &seal_context::hook_key(id))?)
    }

    /// Starts a manual cron run (an active run is canceled first).
    pub async fn trigger_cron_run(
        &self,
        caller: &Caller,
        id: &ServiceId,
    ) -> Result<CronRunId, IngressError> {
        let run = CronRunId::generate();
        let key = format!("cron-trigger:{run}");
        self.service_command(
            Scope::Owner(caller),
            id,
            &key,
            service::Command::StartCronRun {
                run: run.clone(),
                manual: true,
                scheduled_for: None,
            },
        )
        .await?;
        Ok(run)
    }

    /// Cancels the active cron run, if any; returns it.
    pub async fn cancel_cron_run(
        &self,
        caller: &Caller,
        id: &ServiceId,
    ) -> Result<Option<CronRunId>, IngressError> {
        let state = self.show_service(caller, id).await?;
        let Some(run) = state.cron.active.map(|r| r.id) else {
            return Ok(None);
        };
        let key = format!("cron-cancel:{run}");
        self.service_command(
            Scope::Owner(caller),
            id,
            &key,
            service::Command::CancelCronRun { run: run.clone() },
        )
        .await?;
        Ok(Some(run))
    }

    /// Asks for a one-off job: `start_command` once in a container of the
    /// service's live image, on `plan` (the service's own when `None`).
    /// Returns the service with the job pending; a cron component runs it.
    pub async fn create_job(
        &self,
        caller: &Caller,
        id: &ServiceId,
        start_command: String,
        plan: Option<Plan>,
    ) -> Result<(JobId, ServiceState), IngressError> {
        let job = JobId::generate();
        let key = format!("job-create:{job}");
        let state = self
            .service_command(
                Scope::Owner(caller),
                id,
                &key,
                service::Command::CreateJob {
                    job: job.clone(),
                    start_command,
                    plan,
                },
            )
            .await?;
        Ok((job, state))
    }

    /// Cancels a pending or running job (an ended one stays as it ended);
    /// returns the service as it is then.
    pub async fn cancel_job(
        &self,
        caller: &Caller,
        id: &ServiceId,
        job: &JobId,
    ) -> Result<ServiceState, IngressError> {
        self.service_command(
            Scope::Owner(caller),
            id,
            &format!("job-cancel:{job}"),
            service::Command::CancelJob { job: job.clone() },
        )
        .await
    }

    /// Opens the hook key `sealed` holds for service `id`, where `sealed`
    /// comes from a read model: for turning wrong keys away with no bus
    /// work. A read model may be a moment behind (a key regenerated just
    /// now), so only the desk's check against the log is final
    /// ([`Ingress::hook_deploy`]). `None` when it does not open.
    pub fn open_hook_key(&self, id: &ServiceId, sealed: &Sealed) -> Option<Secret> {
        self.key.open(sealed, &seal_context::hook_key(id)).ok()
    }

    /// The deploy hook (SPEC §6): the new deploy's id, once its
    /// `deploy_created` is appended; see [`crate::hooks`].
    pub async fn hook_deploy(
        &self,
        id: &ServiceId,
        key: &str,
        img_url: Option<&str>,
    ) -> Result<DeployId, HookError> {
        let deploy = self.hooks.call(id, key, img_url).await?;
        tracing::debug!(service.id = %id, deploy.id = %deploy, "deploy hook called");
        Ok(deploy)
    }
}

//! Creating and deleting services (SPEC §4).
//!
//! Creation never appends anything before the image is known to be
//! accessible: the command is validated by the service rules as a dry run,
//! the image normalised, the credential checked to be the caller's, and the
//! resolver asked (request/reply) to resolve the image with it. Only then,
//! three decisions, each on its own aggregate with optimistic concurrency:
//!
//! 1. claim the name on the owner (unique per owner);
//! 2. attach the credential on the credential's subject — the same subject
//!    removal decides on, so "create with X" and "remove X" cannot both win;
//! 3. create the service with its initial deploy (trigger `service_created`).
//!
//! A later step's refusal or failure undoes the earlier ones (detach,
//! release the name), so a lost race leaks nothing. A crash between two
//! steps leaves that undo (or, for a deletion, the rest of it) to
//! [`crate::repair`], which finds the leftover in the log.

use std::collections::BTreeMap;

use berth_domain::credential;
use berth_domain::owner::{self, OwnerState};
use berth_domain::service::{self, CreateService, ServiceState, DEFAULT_REGION};
use berth_domain::{Aggregate, Ctx, DomainError};
use berth_runtime::Secret;
use berth_schemas::commands::{ImageCheckReply, ImageCheckRequest};
use berth_schemas::ids::{CredentialId, DeployId, OwnerId, ServiceId};
use berth_schemas::model::{
    seal_context, EnvVars, NotifySetting, OverlapPolicy, Plan, ResolvedImage, ServiceType,
};
use berth_schemas::{Actor, AggregateId};
use rand::RngCore;

use crate::failpoint::failpoint;
use crate::{exec, Caller, CheckError, Ingress, IngressError, Scope};

/// A service to create, as the API's create body gives it.
#[derive(Debug, Clone)]
pub struct NewService {
    pub name: String,
    pub service_type: ServiceType,
    /// As typed; normalised here.
    pub image: String,
    pub credential: Option<CredentialId>,
    /// Default `oregon`.
    pub region: Option<String>,
    /// Default `starter` (0.5 CPU, 512 MiB).
    pub plan: Option<Plan>,
    pub num_instances: Option<u32>,
    pub docker_command: Option<String>,
    /// Values in clear; sealed here, bound to the service and the name.
    pub env_vars: BTreeMap<String, Secret>,
    /// Secret files, by name, in clear (sealed before anything is appended).
    pub secret_files: BTreeMap<String, Secret>,
    pub pre_deploy_command: Option<String>,
    pub health_check_path: Option<String>,
    pub schedule: Option<String>,
    pub notify: Option<NotifySetting>,
    pub overlap_policy: Option<OverlapPolicy>,
    pub shutdown_delay_secs: Option<u16>,
    /// Web services only; default on.
    pub https_redirect: Option<bool>,
    /// A persistent disk (its id is made here).
    pub disk: Option<NewDisk>,
    /// Its autoscaling, from the start.
    pub autoscaling: Option<berth_schemas::model::AutoscalingConfig>,
    /// Web services: its maintenance mode, from the start.
    pub maintenance_mode: Option<berth_schemas::model::MaintenanceMode>,
    /// Web services: the client addresses let through (`None`: all).
    pub ip_allow_list: Option<Vec<berth_schemas::model::CidrBlock>>,
}

/// A service's disk as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDisk {
    pub name: String,
    pub mount_path: String,
    pub size_gb: u32,
}

impl NewService {
    /// A service with defaults for everything optional.
    pub fn new(name: &str, service_type: ServiceType, image: &str) -> Self {
        Self {
            name: name.to_owned(),
            service_type,
            image: image.to_owned(),
            credential: None,
            region: None,
            plan: None,
            num_instances: None,
            docker_command: None,
            env_vars: BTreeMap::new(),
            secret_files: BTreeMap::new(),
            pre_deploy_command: None,
            health_check_path: None,
            schedule: None,
            notify: None,
            overlap_policy: None,
            shutdown_delay_secs: None,
            https_redirect: None,
            disk: None,
            autoscaling: None,
            maintenance_mode: None,
            ip_allow_list: None,
        }
    }
}

/// A created service.
#[derive(Debug, Clone)]
pub struct CreatedService {
    pub id: ServiceId,
    /// The initial deploy (trigger `service_created`).
    pub deploy: DeployId,
    /// The normalised image reference.
    pub image: String,
    /// What the image resolved to when it was verified (the deploy resolves
    /// again: the tag may move in between).
    pub verified: ResolvedImage,
    /// The deploy hook key, in clear for the caller to show once.
    pub hook_key: Secret,
    /// The service's state after creation.
    pub state: ServiceState,
}

pub(crate) fn hook_key() -> Secret {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(data_encoding::BASE64URL_NOPAD.encode(&bytes))
}

impl Ingress {
    fn seal_command(
        &self,
        caller: &Caller,
        id: &ServiceId,
        new: &NewService,
    ) -> Result<(CreateService, Secret), IngressError> {
        let hook = hook_key();
        let sealed_hook = self.key.seal(&hook, &seal_context::hook_key(id))?;
        let mut env_vars = EnvVars::new();
        for (name, value) in &new.env_vars {
            let sealed = self.key.seal(value, &seal_context::env_var(id, name))?;
            env_vars.insert(name.clone(), sealed);
        }
        let mut c = CreateService::new(
            caller.owner.clone(),
            &new.name,
            new.service_type,
            &new.image,
            sealed_hook,
            DeployId::generate(),
        );
        c.credential = new.credential.clone();
        c.region = new
            .region
            .clone()
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        if let Some(plan) = &new.plan {
            c.plan = plan.clone();
        }
        c.num_instances = new.num_instances;
        c.docker_command = new.docker_command.clone();
        c.env_vars = env_vars;
        c.secret_files = self.seal_secret_files(id, new.secret_files.iter())?;
        c.pre_deploy_command = new.pre_deploy_command.clone();
        c.health_check_path = new.health_check_path.clone();
        c.schedule = new.schedule.clone();
        c.notify = new.notify;
        c.overlap_policy = new.overlap_policy;
        c.shutdown_delay_secs = new.shutdown_delay_secs;
        c.https_redirect = new.https_redirect;
        c.autoscaling = new.autoscaling.clone();
        c.maintenance_mode = new.maintenance_mode.clone();
        c.ip_allow_list = new.ip_allow_list.clone();
        c.disk = new.disk.as_ref().map(|d| berth_schemas::model::Disk {
            id: berth_schemas::ids::DiskId::generate(),
            name: d.name.clone(),
            mount_path: d.mount_path.clone(),
            size_gb: d.size_gb,
        });
        Ok((c, hook))
    }

    /// `id`'s current state, from the store's folded state (only what was
    /// appended since is read and folded).
    pub(crate) async fn load_fold<S: Default + Clone + Send + Sync + 'static>(
        &self,
        id: &AggregateId,
        fold: impl Fn(S, &berth_schemas::Envelope) -> S,
    ) -> Result<S, IngressError> {
        let (state, _) = self
            .store
            .state(id, fold)
            .await
            .map_err(|e| IngressError::Store(e.to_string()))?;
        Ok(S::clone(&state))
    }

    /// Verifies the image, then creates the service and starts its initial
    /// deploy. On any refusal nothing stays appended.
    pub async fn create_service(
        &self,
        caller: &Caller,
        new: NewService,
    ) -> Result<CreatedService, IngressError> {
        let id = ServiceId::generate();
        let (mut command, hook) = self.seal_command(caller, &id, &new)?;
        let ctx = Ctx::default();

        // Dry run of every field rule; this also normalises the image.
        let dry = service::decide(
            &ServiceState::default(),
            service::Command::Create(Box::new(command.clone())),
            &ctx,
        )?;
        let created = service::Service::apply_all(ServiceState::default(), &dry);
        let image = created
            .config
            .as_ref()
            .map(|c| c.image.clone())
            .ok_or_else(|| IngressError::Store("dry run created no service".to_owned()))?;
        command.image = image.clone();

        // Cheap refusals before asking a registry anything.
        let owner_id = AggregateId::Owner(caller.owner.clone());
        let owner_state: OwnerState = self.load_fold(&owner_id, owner::fold).await?;
        if owner_state.owner.is_none() {
            return Err(IngressError::not_found("owner", &caller.owner));
        }
        if let Some(by) = owner_state.service_named(&new.name) {
            return Err(DomainError::NameTaken {
                name: new.name.clone(),
                by: by.clone(),
            }
            .into());
        }
        if let Some(cred) = &new.credential {
            // The caller's own, or 404.
            self.show_credential(caller, cred).await?;
        }

        // Verify access (SPEC §4) before anything is appended.
        let verified = self.verify(caller, &image, new.credential.clone()).await?;

        // 1. The name.
        let key = format!("service-create-{id}-name");
        self.set_name(&caller.owner, &new.name, &id, true, &key, &caller.actor)
            .await?;
        failpoint("service-create:after-name");

        // 2. The credential.
        if let Some(cred) = &new.credential {
            if let Err(e) = self.attach(caller, &id, cred, "create").await {
                // A refusal appended nothing; any other failure may have
                // landed the attach, so take it back too.
                let landed = (!matches!(e, IngressError::Rejected(_))).then_some(cred);
                self.undo_create(caller, &id, &new.name, landed).await;
                return Err(e);
            }
        }
        failpoint("service-create:after-credential");

        // 3. The service and its initial deploy.
        let deploy = command.deploy.clone();
        let create = service::Command::Create(Box::new(command));
        let done = exec::run::<service::Service>(
            &self.store,
            &AggregateId::Service(id.clone()),
            &format!("service-create-{id}"),
            &caller.actor,
            create,
        )
        .await;
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                self.undo_create(caller, &id, &new.name, new.credential.as_ref())
                    .await;
                return Err(e);
            }
        };
        failpoint("service-create:after-service");
        tracing::info!(service.id = %id, deploy.id = %deploy, owner = %caller.owner, image = %image, "service created");
        Ok(CreatedService {
            id,
            deploy,
            image,
            verified,
            hook_key: hook,
            state: std::sync::Arc::unwrap_or_clone(done.state),
        })
    }

    pub(crate) async fn verify(
        &self,
        caller: &Caller,
        image: &str,
        credential: Option<CredentialId>,
    ) -> Result<ResolvedImage, IngressError> {
        let request = ImageCheckRequest {
            owner: caller.owner.clone(),
            image: image.to_owned(),
            credential,
        };
        match self.checker.check(&request).await {
            Ok(ImageCheckReply::Accessible { image }) => Ok(image),
            Ok(ImageCheckReply::Failed { reason, message }) => {
                tracing::info!(image = %image, reason = %reason, "image check failed; nothing created");
                Err(IngressError::ImageInaccessible {
                    image: image.to_owned(),
                    reason,
                    message,
                })
            }
            Err(
                e @ (CheckError::NoResolver
                | CheckError::Timeout(_)
                | CheckError::Transport(_)
                | CheckError::BadReply(_)),
            ) => Err(IngressError::CheckUnavailable(e.to_string())),
        }
    }

    /// Attaches `cred` to `service` for `owner`, or detaches it (`owner`
    /// `None`), on the credential's subject — the same subject removal
    /// decides on. A removed credential has nothing attached any more, so
    /// detaching from it is done. True when something was appended.
    pub(crate) async fn set_attachment(
        &self,
        cred: &CredentialId,
        service: &ServiceId,
        attach_for: Option<&OwnerId>,
        key: &str,
        actor: &Actor,
    ) -> Result<bool, IngressError> {
        let command = match attach_for {
            Some(owner) => credential::Command::Attach {
                service: service.clone(),
                owner: owner.clone(),
            },
            None => credential::Command::Detach {
                service: service.clone(),
            },
        };
        let done = exec::run::<credential::CredentialAggregate>(
            &self.store,
            &AggregateId::Credential(cred.clone()),
            key,
            actor,
            command,
        )
        .await;
        match done {
            Ok(done) => Ok(done.appended.is_some()),
            Err(IngressError::Rejected(DomainError::NotFound { .. })) if attach_for.is_none() => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Claims `name` for `service` on `owner`'s subject (names are unique
    /// per owner), or gives it back (`claim` false). True when something
    /// was appended.
    pub(crate) async fn set_name(
        &self,
        owner: &OwnerId,
        name: &str,
        service: &ServiceId,
        claim: bool,
        key: &str,
        actor: &Actor,
    ) -> Result<bool, IngressError> {
        let (name, service) = (name.to_owned(), service.clone());
        let command = if claim {
            owner::Command::ClaimServiceName { name, service }
        } else {
            owner::Command::ReleaseServiceName { name, service }
        };
        let done = self.owner_run(owner, key, actor, command).await?;
        Ok(done.appended.is_some())
    }

    /// Attaches `cred` to the caller's `service`; `why` makes the
    /// idempotency key unique to this operation (message ids are
    /// deduplicated stream-wide).
    pub(crate) async fn attach(
        &self,
        caller: &Caller,
        service: &ServiceId,
        cred: &CredentialId,
        why: &str,
    ) -> Result<(), IngressError> {
        let key = format!("service-{why}-{service}-attach");
        self.set_attachment(cred, service, Some(&caller.owner), &key, &caller.actor)
            .await
            .map(drop)
    }

    pub(crate) async fn detach(
        &self,
        caller: &Caller,
        service: &ServiceId,
        cred: &CredentialId,
        why: &str,
    ) -> Result<(), IngressError> {
        let key = format!("service-{why}-{service}-detach");
        self.set_attachment(cred, service, None, &key, &caller.actor)
            .await
            .map(drop)
    }

    pub(crate) async fn release_name(
        &self,
        caller: &Caller,
        service: &ServiceId,
        name: &str,
        why: &str,
    ) -> Result<(), IngressError> {
        let key = format!("service-{why}-{service}-release");
        self.set_name(&caller.owner, name, service, false, &key, &caller.actor)
            .await
            .map(drop)
    }

    /// Compensation after a failed creation step: best effort, logged; a
    /// leftover (e.g. the store went away) is given back by
    /// [`crate::repair`] after its grace period.
    async fn undo_create(
        &self,
        caller: &Caller,
        service: &ServiceId,
        name: &str,
        credential: Option<&CredentialId>,
    ) {
        if let Some(cred) = credential {
            if let Err(e) = self.detach(caller, service, cred, "undo").await {
                tracing::error!(service.id = %service, credential.id = %cred, error = %e, "could not detach after a failed create");
            }
        }
        if let Err(e) = self.release_name(caller, service, name, "undo").await {
            tracing::error!(service.id = %service, name, error = %e, "could not release the name after a failed create");
        }
    }

    /// The caller's service.
    pub async fn show_service(
        &self,
        caller: &Caller,
        id: &ServiceId,
    ) -> Result<ServiceState, IngressError> {
        let state: ServiceState = self
            .load_fold(&AggregateId::Service(id.clone()), service::fold)
            .await?;
        match &state.config {
            Some(c) if c.owner == caller.owner && state.exists() => Ok(state),
            _ => Err(IngressError::not_found("service", id)),
        }
    }

    /// The caller's service folded with every deploy it ever had, read
    /// from the log: for a look past the recent deploys a service holds
    /// ([`berth_domain::service::KEPT_ENDED_DEPLOYS`]). Costs a read of
    /// the whole history; the fold is not kept.
    pub async fn service_with_every_deploy(
        &self,
        caller: &Caller,
        id: &ServiceId,
    ) -> Result<ServiceState, IngressError> {
        let aggregate = AggregateId::Service(id.clone());
        let (state, _) = self
            .store
            .state(
                &aggregate,
                <service::ServiceHistory as berth_domain::Aggregate>::fold,
            )
            .await
            .map_err(|e| IngressError::Store(e.to_string()))?;
        // Let go by the store first: then taken over, not copied.
        self.store.forget_state::<service::EveryDeploy>(&aggregate);
        let state = std::sync::Arc::unwrap_or_clone(state);
        match &state.0.config {
            Some(c) if c.owner == caller.owner && state.0.exists() => Ok(state.0),
            _ => Err(IngressError::not_found("service", id)),
        }
    }

    /// Requests a deploy (trigger `api`) of the service's image, or of
    /// another tag or digest of its repository (`image`). Returns its id.
    pub async fn request_deploy(
        &self,
        caller: &Caller,
        id: &ServiceId,
        image: Option<&str>,
    ) -> Result<DeployId, IngressError> {
        let (deploy, _) = self.deploy(Scope::Owner(caller), id, image, None).await?;
        Ok(deploy)
    }

    /// Deletes the caller's service, then gives back its name, detaches
    /// its credential and gives back its custom domains.
    pub async fn delete_service(
        &self,
        caller: &Caller,
        id: &ServiceId,
    ) -> Result<(), IngressError> {
        let state = self
            .service_command(
                Scope::Owner(caller),
                id,
                &format!("service-delete-{id}"),
                service::Command::Delete,
            )
            .await?;
        let Some(cfg) = &state.config else {
            return Ok(());
        };
        failpoint("service-delete:after-service");
        self.release_name(caller, id, &cfg.name, "delete").await?;
        failpoint("service-delete:after-name");
        if let Some(cred) = &cfg.credential {
            self.detach(caller, id, cred, "delete").await?;
        }
        self.release_domains(caller, id, &state).await?;
        tracing::info!(service.id = %id, "service deleted");
        Ok(())
    }
}

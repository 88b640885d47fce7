//! A service's environment variables one at a time: read them in clear
//! (for their owner), set one, remove one. Each change is one decision on
//! the service, made on the variables it holds at that moment (two
//! clients setting different keys at once both land); like any change of
//! env vars it redeploys the service.

use std::collections::BTreeMap;

use berth_domain::service::{self, ServiceConfig, ServiceState};
use berth_domain::DomainError;
use berth_runtime::Secret;
use berth_schemas::events::ServiceSettings;
use berth_schemas::ids::{DeployId, ServiceId};
use berth_schemas::model::{seal_context, Sealed};
use berth_schemas::AggregateId;

use crate::{exec, Caller, Ingress, IngressError};

/// One change to a service's env vars.
#[derive(Debug, Clone)]
pub enum EnvEdit {
    /// Sets `key` to the value (added, or replaced).
    Set(String, Secret),
    /// Removes `key`; "not found" when the service has no such variable.
    Remove(String),
    /// Several at once, one decision and one deploy: each key set to its
    /// value, or removed (`None`; a key the service does not have is
    /// already removed).
    Merge(Vec<(String, Option<Secret>)>),
}

impl Ingress {
    /// The caller's service's env vars, opened, by name.
    pub async fn env_vars(
        &self,
        caller: &Caller,
        id: &ServiceId,
    ) -> Result<BTreeMap<String, Secret>, IngressError> {
        self.opened(caller, id, |c| &c.env_vars, seal_context::env_var)
            .await
    }

    /// One of the caller's service's sealed maps (`pick`: its env vars,
    /// its secret files), each value opened with `context(service, name)`.
    pub(crate) async fn opened(
        &self,
        caller: &Caller,
        id: &ServiceId,
        pick: impl Fn(&ServiceConfig) -> &BTreeMap<String, Sealed>,
        context: impl Fn(&ServiceId, &str) -> String,
    ) -> Result<BTreeMap<String, Secret>, IngressError> {
        let state = self.show_service(caller, id).await?;
        let Some(cfg) = state.config.as_ref() else {
            return Err(IngressError::not_found("service", id));
        };
        pick(cfg)
            .iter()
            .map(|(name, sealed)| Ok((name.clone(), self.key.open(sealed, &context(id, name))?)))
            .collect()
    }

    /// Applies `edit` to the caller's service; returns the state after it
    /// and the deploy the change started (none when nothing changed).
    pub async fn edit_env_var(
        &self,
        caller: &Caller,
        id: &ServiceId,
        edit: EnvEdit,
    ) -> Result<(ServiceState, Option<DeployId>), IngressError> {
        // Sealed once, outside the decision (which may run again).
        let mut sealed: Vec<(String, Option<berth_schemas::model::Sealed>)> = Vec::new();
        match &edit {
            EnvEdit::Set(k, v) => {
                sealed.push((
                    k.clone(),
                    Some(self.key.seal(v, &seal_context::env_var(id, k))?),
                ));
            }
            EnvEdit::Remove(_) => {}
            EnvEdit::Merge(changes) => {
                for (k, v) in changes {
                    let v = match v {
                        Some(v) => Some(self.key.seal(v, &seal_context::env_var(id, k))?),
                        None => None,
                    };
                    sealed.push((k.clone(), v));
                }
            }
        }
        self.configure(caller, id, "env-var", |c| {
            let mut vars = c.env_vars.clone();
            if let EnvEdit::Remove(k) = &edit {
                if vars.remove(k).is_none() {
                    return Err(DomainError::NotFound {
                        what: "env var",
                        id: k.clone(),
                    });
                }
            }
            for (k, v) in &sealed {
                match v {
                    Some(v) => vars.insert(k.clone(), v.clone()),
                    None => vars.remove(k),
                };
            }
            Ok((vars != c.env_vars).then(|| ServiceSettings {
                env_vars: Some(vars),
                ..ServiceSettings::default()
            }))
        })
        .await
    }

    /// Changes the caller's service's settings as `change` makes them from
    /// its configuration when the command runs (again after a conflict),
    /// so two clients changing different parts at once both land; `None`:
    /// nothing to change. Not the caller's, deleted or never created: not
    /// found. Returns the state after it and the deploy the change started
    /// (`what` names the idempotency key's kind).
    pub(crate) async fn configure(
        &self,
        caller: &Caller,
        id: &ServiceId,
        what: &str,
        change: impl Fn(&ServiceConfig) -> Result<Option<ServiceSettings>, DomainError>,
    ) -> Result<(ServiceState, Option<DeployId>), IngressError> {
        let deploy = DeployId::generate();
        let key = format!("{what}-{id}-{deploy}");
        let state = self
            .decide_on_own(caller, id, &key, |_, c| {
                Ok(change(c)?.map(|settings| service::Command::Update {
                    settings: Box::new(settings),
                    deploy: deploy.clone(),
                }))
            })
            .await?;
        let started = state.deploy(&deploy).is_some().then_some(deploy);
        Ok((state, started))
    }

    /// Decides `choose` on the caller's service as it is when the command
    /// runs (again after a conflict), so what it merges is never a stale
    /// copy; returns the state after it. Not the caller's, deleted or never
    /// created: not found.
    pub(crate) async fn decide_on_own(
        &self,
        caller: &Caller,
        id: &ServiceId,
        key: &str,
        choose: impl Fn(&ServiceState, &ServiceConfig) -> Result<Option<service::Command>, DomainError>,
    ) -> Result<ServiceState, IngressError> {
        let owner = &caller.owner;
        let done = exec::run_when::<service::Service>(
            &self.store,
            &AggregateId::Service(id.clone()),
            key,
            &caller.actor,
            |s: &ServiceState| match s.config.as_ref() {
                Some(c) if c.owner == *owner && s.exists() => choose(s, c),
                _ => Err(DomainError::NotFound {
                    what: "service",
                    id: id.to_string(),
                }),
            },
        )
        .await?;
        Ok(std::sync::Arc::unwrap_or_clone(done.state))
    }
}

//! Log streams: an owner's endpoint for every line its services write, and
//! a service's override of it (Render's `/logs/streams/…`). Tokens are
//! sealed before anything is appended and never come out again; the
//! notifier opens them to send.
//!
//! A token is bound to its endpoint: a change of endpoint without a new
//! token drops the old one, so a token meant for one provider is never
//! sent to another.

use berth_domain::log_stream::check_token;
use berth_domain::owner::{self, OwnerState};
use berth_domain::service::{self, ServiceState};
use berth_domain::DomainError;
use berth_runtime::Secret;
use berth_schemas::ids::{ApiKeyId, OwnerId, ServiceId};
use berth_schemas::model::{seal_context, LogStream, LogStreamOverride, LogStreamSetting, Sealed};
use berth_schemas::Actor;

use crate::{Caller, Ingress, IngressError};

/// An owner's failing log stream endpoints, by endpoint.
pub type DeliveryFailures = std::collections::BTreeMap<String, owner::DeliveryFailure>;

/// An owner's stream as asked: absent fields keep what is set.
#[derive(Debug, Default)]
pub struct StreamChange {
    /// `HOST:PORT`; `None` keeps the endpoint set.
    pub endpoint: Option<String>,
    /// `None` keeps the token (for the same endpoint), `""` removes it.
    pub token: Option<Secret>,
    pub preview: Option<LogStreamSetting>,
}

/// A service's override as asked.
#[derive(Debug)]
pub struct OverrideChange {
    pub setting: LogStreamSetting,
    pub endpoint: Option<String>,
    /// `None` keeps the token (for the same endpoint), `""` removes it.
    pub token: Option<Secret>,
}

/// What a token field asks, once checked and sealed.
#[derive(Clone)]
enum TokenChange {
    Keep,
    Set(Sealed),
    Remove,
}

impl TokenChange {
    /// The token of the new setting; `kept` is the one set, when it was
    /// set for the same endpoint (a token never goes to another host).
    fn pick(&self, kept: Option<&Sealed>) -> Option<Sealed> {
        match self {
            TokenChange::Set(t) => Some(t.clone()),
            TokenChange::Remove => None,
            TokenChange::Keep => kept.cloned(),
        }
    }
}

/// `token` when it was set for `endpoint`.
fn for_endpoint<'a>(
    endpoint: Option<&str>,
    token: Option<&'a Sealed>,
    wanted: &str,
) -> Option<&'a Sealed> {
    token.filter(|_| endpoint == Some(wanted))
}

impl Ingress {
    fn seal_token(
        &self,
        token: Option<&Secret>,
        context: &str,
    ) -> Result<TokenChange, IngressError> {
        let Some(t) = token else {
            return Ok(TokenChange::Keep);
        };
        if t.expose().is_empty() {
            return Ok(TokenChange::Remove);
        }
        check_token(t.expose())?;
        Ok(TokenChange::Set(self.key.seal(t, context)?))
    }

    /// The owner's log stream, if one is set, and its endpoints (its own
    /// and its services') that lines do not reach now.
    pub async fn owner_log_stream(
        &self,
        owner: &OwnerId,
    ) -> Result<(Option<LogStream>, DeliveryFailures), IngressError> {
        let state = self.load_owner(owner).await?;
        Ok((state.log_stream, state.log_stream_failures))
    }

    /// Why lines do not reach `endpoint`, one of the owner's log stream
    /// endpoints, if they do not.
    pub async fn log_stream_failure(
        &self,
        owner: &OwnerId,
        endpoint: &str,
    ) -> Result<Option<berth_domain::owner::DeliveryFailure>, IngressError> {
        Ok(self
            .load_owner(owner)
            .await?
            .log_stream_failures
            .remove(endpoint))
    }

    /// Sets or changes the owner's log stream, merged with the one set
    /// (inside the decision, so a concurrent change is not overwritten
    /// with a stale copy).
    pub async fn set_owner_log_stream(
        &self,
        owner: &OwnerId,
        change: StreamChange,
        actor: &Actor,
    ) -> Result<LogStream, IngressError> {
        let token = self.seal_token(
            change.token.as_ref(),
            &seal_context::owner_log_stream_token(owner),
        )?;
        let key = format!("owner-log-stream-{owner}-{}", ApiKeyId::generate());
        let state = self
            .owner_when(owner, &key, actor, |s: &OwnerState| {
                let old = s.log_stream.as_ref();
                let Some(endpoint) = change
                    .endpoint
                    .clone()
                    .or_else(|| old.map(|o| o.endpoint.clone()))
                else {
                    return Err(DomainError::Invalid {
                        field: "endpoint",
                        reason: "is required: no log stream is set yet".to_owned(),
                    });
                };
                let stream = LogStream {
                    token: token.pick(for_endpoint(
                        old.map(|o| o.endpoint.as_str()),
                        old.and_then(|o| o.token.as_ref()),
                        &endpoint,
                    )),
                    endpoint,
                    preview: change
                        .preview
                        .or(old.map(|o| o.preview))
                        .unwrap_or(LogStreamSetting::Send),
                };
                Ok(Some(owner::Command::SetLogStream(Some(stream))))
            })
            .await?;
        tracing::info!(owner = %owner, "log stream set");
        state
            .log_stream
            .clone()
            .ok_or_else(|| IngressError::not_found("log stream", owner))
    }

    /// Removes the owner's log stream; 404 when none is set.
    pub async fn remove_owner_log_stream(
        &self,
        owner: &OwnerId,
        actor: &Actor,
    ) -> Result<(), IngressError> {
        let key = format!("owner-log-stream-remove-{owner}-{}", ApiKeyId::generate());
        self.owner_when(owner, &key, actor, |s: &OwnerState| match s.log_stream {
            Some(_) => Ok(Some(owner::Command::SetLogStream(None))),
            None => Err(DomainError::NotFound {
                what: "log stream",
                id: owner.to_string(),
            }),
        })
        .await?;
        tracing::info!(owner = %owner, "log stream removed");
        Ok(())
    }

    /// Sets, changes or (`None`) removes a service's override of its
    /// owner's log stream, merged with the one set inside the decision;
    /// removing none is not found. Returns the service after it.
    pub async fn set_service_log_stream(
        &self,
        caller: &Caller,
        id: &ServiceId,
        change: Option<OverrideChange>,
    ) -> Result<ServiceState, IngressError> {
        // Sealed once, outside the decision (which may run again).
        let asked = match change {
            Some(c) => {
                let context = seal_context::service_log_stream_token(id);
                let token = self.seal_token(c.token.as_ref(), &context)?;
                Some((c, token))
            }
            None => None,
        };
        let key = format!("log-stream-{id}-{}", ApiKeyId::generate());
        let state = self
            .decide_on_own(caller, id, &key, |s, _| {
                let old = s.log_stream.as_ref();
                let stream = match (&asked, old) {
                    (Some((c, token)), _) => Some(LogStreamOverride {
                        setting: c.setting,
                        endpoint: c.endpoint.clone(),
                        token: token.pick(c.endpoint.as_deref().and_then(|e| {
                            for_endpoint(
                                old.and_then(|o| o.endpoint.as_deref()),
                                old.and_then(|o| o.token.as_ref()),
                                e,
                            )
                        })),
                    }),
                    (None, Some(_)) => None,
                    (None, None) => {
                        return Err(DomainError::NotFound {
                            what: "log stream override",
                            id: id.to_string(),
                        })
                    }
                };
                Ok(Some(service::Command::SetLogStream(stream)))
            })
            .await?;
        tracing::info!(service.id = %id, "log stream override changed");
        Ok(state)
    }
}

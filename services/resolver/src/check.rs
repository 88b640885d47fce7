//! The responder for image checks on `…resolver.check` (queue group
//! `resolver`, so several resolvers share the load): ingress asks before it
//! creates a service (SPEC §4). Requests and replies are MessagePack.
//!
//! A request that cannot be decoded, or a check that cannot read the event
//! store, gets no reply: the caller's timeout turns that into "try again
//! later" rather than a wrong verdict about the image.

use std::sync::Arc;

use berth_schemas::commands::{ImageCheckReply, ImageCheckRequest};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::access::{self, AccessError};
use crate::{Inner, ResolverError};

/// Queue group every resolver subscribes with.
pub const QUEUE_GROUP: &str = "resolver";

pub(crate) async fn subscribe(inner: &Inner) -> Result<async_nats::Subscriber, ResolverError> {
    inner
        .store
        .client()
        .queue_subscribe(
            inner.store.subjects().resolver_check(),
            QUEUE_GROUP.to_owned(),
        )
        .await
        .map_err(|e| ResolverError::Nats(e.to_string()))
}

/// Answers checks until `shutdown`; in-flight checks finish first.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    mut sub: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(inner.opts.concurrency.max(1) * 4));
    let mut tasks = JoinSet::new();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let inner = Arc::clone(&inner);
        tasks.spawn(async move {
            answer(&inner, msg).await;
            drop(permit);
        });
    }
    let _ = sub.unsubscribe().await;
    while tasks.join_next().await.is_some() {}
}

async fn answer(inner: &Inner, msg: async_nats::Message) {
    let Some(reply_to) = msg.reply.clone() else {
        tracing::warn!("image check without a reply subject ignored");
        return;
    };
    let req: ImageCheckRequest = match rmp_serde::from_slice(&msg.payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable image check ignored");
            return;
        }
    };
    let span = tracing::info_span!("image_check", image = %req.image, owner = %req.owner, credential.id = ?req.credential);
    reply(inner, reply_to, req).instrument(span).await;
}

async fn reply(inner: &Inner, reply_to: async_nats::Subject, req: ImageCheckRequest) {
    let outcome = access::resolve(
        &inner.store,
        &inner.key,
        &inner.check_client,
        &req.owner,
        &req.image,
        req.credential.as_ref(),
    )
    .await;
    let reply = match outcome {
        Ok(image) => {
            tracing::info!(digest = %image.digest, "image accessible");
            ImageCheckReply::Accessible { image }
        }
        Err(AccessError::Failed { reason, message }) => {
            tracing::info!(reason = %reason, message = %message, "image not accessible");
            ImageCheckReply::Failed { reason, message }
        }
        Err(AccessError::Store(e)) => {
            tracing::warn!(error = %e, "image check could not read the event store; no reply");
            return;
        }
    };
    match rmp_serde::to_vec_named(&reply) {
        Ok(bytes) => {
            if let Err(e) = inner.store.client().publish(reply_to, bytes.into()).await {
                tracing::warn!(error = %e, "image check reply not sent");
            }
        }
        Err(e) => tracing::error!(error = %e, "image check reply not encodable"),
    }
}

//! Running a set of components under the one shutdown story: serve
//! `/healthz` and `/metrics`, start every component on the tracker, and when
//! a signal arrives (or any component fails) cancel, wait out the grace
//! period, and drain the NATS client.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::component::{BoxError, Component, ComponentContext};
use crate::config::Config;
use crate::http::{Health, HttpServer};
use crate::shutdown::{drain_nats, Drained, Shutdown};

/// How a run ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A component returned an error (the others were then stopped).
    #[error("component {name} failed: {source}")]
    ComponentFailed {
        /// Which one.
        name: &'static str,
        /// Why.
        source: BoxError,
    },
    /// A component task panicked.
    #[error("component {name} panicked")]
    ComponentPanicked {
        /// Which one.
        name: &'static str,
    },
    /// Tasks were still running when the grace period ended.
    #[error("{remaining} task(s) still running after the {grace:?} grace period")]
    GraceExceeded {
        /// How many.
        remaining: usize,
        /// The grace period.
        grace: Duration,
    },
}

/// Everything [`run_components`] needs, set up by the main.
#[derive(Debug)]
pub struct RunDeps {
    /// Validated config.
    pub config: Arc<Config>,
    /// Connected client.
    pub client: async_nats::Client,
    /// The bound operations listener.
    pub http: HttpServer,
    /// The metrics handle from [`crate::http::install_metrics`].
    pub metrics: PrometheusHandle,
}

/// Runs `components` until shutdown; returns the first failure, if any.
/// Signals must already be hooked up (`shutdown.listen_for_signals()`).
pub async fn run_components(
    deps: RunDeps,
    components: Vec<Box<dyn Component>>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let RunDeps {
        config,
        client,
        http,
        metrics,
    } = deps;
    let health = Health::new();
    health.nats(client.clone());
    let jetstream = async_nats::jetstream::new(client.clone());

    let mut handles = Vec::new();
    for component in components {
        let name = component.name();
        let ctx = ComponentContext {
            name,
            client: client.clone(),
            jetstream: jetstream.clone(),
            subjects: config.subjects.clone(),
            config: config.clone(),
            shutdown: shutdown.token(),
            tracker: shutdown.tracker(),
            ready: health.register(name),
        };
        metrics::gauge!("berth_component_up", "component" => name).set(1.0);
        let token = shutdown.token();
        let handle = shutdown.spawn(name, async move {
            tracing::info!(component = name, "component starting");
            let result = component.run(ctx).await;
            metrics::gauge!("berth_component_up", "component" => name).set(0.0);
            match &result {
                Ok(()) if token.is_cancelled() => tracing::info!(component = name, "component stopped"),
                Ok(()) => tracing::warn!(component = name, "component ended before shutdown"),
                Err(e) => {
                    metrics::counter!("berth_component_failures_total", "component" => name).increment(1);
                    tracing::error!(component = name, error = %e, "component failed; shutting down");
                    token.cancel();
                }
            }
            result
        });
        handles.push((name, handle));
    }
    http.serve(health, metrics, &shutdown);

    shutdown.triggered().await;
    let drained = shutdown.wait_for_tasks().await;
    drain_nats(&client, Duration::from_secs(5)).await;

    let mut first_error = None;
    for (name, handle) in handles {
        if !handle.is_finished() {
            // Named here: the grace-period error only counts tasks.
            tracing::warn!(
                component = name,
                "component still running after the grace period; aborted"
            );
            handle.abort();
            continue;
        }
        let err = match handle.await {
            Ok(Ok(())) => continue,
            Ok(Err(source)) => RunError::ComponentFailed { name, source },
            Err(_) => RunError::ComponentPanicked { name },
        };
        first_error.get_or_insert(err);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    match drained {
        Drained::Clean => Ok(()),
        Drained::TimedOut { remaining } => Err(RunError::GraceExceeded {
            remaining,
            grace: shutdown.grace(),
        }),
    }
}

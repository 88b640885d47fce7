//! The workload: per service, two lanes of commands run side by side, each
//! lane one command after another, as clients do. A command is retried as
//! a real client retries it: on no answer (connection refused, timeout) or
//! a 5xx, with the same `requestId` where the interface takes one (bus
//! commands), else as a new request (HTTP deploys, hooks, rollbacks: an
//! unanswered try may still have taken effect, so it is counted as an
//! outcome unknown). Each answered command is recorded with its answer.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::rng::Rng;
use crate::world::{Svc, World};

/// How long a client keeps retrying one command.
const GIVE_UP: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `POST /v1/services/{id}/deploys`
    ApiDeploy,
    /// `GET /deploy/srv-…?key=…`
    Hook,
    /// `cmd.<owner>.deploy` with a request id.
    BusDeploy,
    /// `cmd.<owner>.scale` with a request id.
    BusScale,
    /// `POST /v1/services/{id}/scale`
    ApiScale,
    /// `cmd.<owner>.restart` with a request id.
    BusRestart,
    /// `POST /v1/services/{id}/rollback`
    Rollback,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::ApiDeploy => "api deploy",
            Kind::Hook => "deploy hook",
            Kind::BusDeploy => "bus deploy",
            Kind::BusScale => "bus scale",
            Kind::ApiScale => "api scale",
            Kind::BusRestart => "bus restart",
            Kind::Rollback => "rollback",
        }
    }

    pub fn makes_deploy(self) -> bool {
        matches!(
            self,
            Kind::ApiDeploy | Kind::Hook | Kind::BusDeploy | Kind::Rollback
        )
    }
}

/// One command the workload sent, and what became of it.
#[derive(Debug, Clone)]
pub struct Record {
    pub service: usize,
    pub kind: Kind,
    /// The bus request id (its idempotency key in the log derives from it).
    pub request: Option<String>,
    /// The tag asked for, if not the service's.
    pub tag: Option<&'static str>,
    pub num_instances: Option<u32>,
    pub rollback_of: Option<String>,
    /// The deploy the answer named.
    pub deploy: Option<String>,
    pub sent: DateTime<Utc>,
    /// When it was acknowledged; `None`: never answered yes.
    pub acked: Option<DateTime<Utc>>,
    /// A refusal (4xx): the command took no effect, by contract.
    pub refused: Option<String>,
    /// Tries that got no answer (or a 5xx) before the last one.
    pub unanswered: u32,
    /// Whether a fault was going on in its round.
    pub faulted: bool,
}

impl Record {
    /// The idempotency key its append carries in the log (bus commands).
    pub fn log_key(&self, svc: &Svc) -> Option<String> {
        let r = self.request.as_ref()?;
        let verb = match self.kind {
            Kind::BusDeploy => "deploy",
            Kind::BusScale => "scale",
            Kind::BusRestart => "restart",
            _ => return None,
        };
        Some(format!("{verb}-{}-{r}", svc.id))
    }
}

/// A planned command.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Think time before it is sent: a round's commands spread over the
    /// seconds its fault may come in.
    pub pause: Duration,
    pub kind: Kind,
    pub tag: Option<&'static str>,
    pub num_instances: Option<u32>,
}

/// The tag no image has: a deploy of it fails (the image is not found).
pub const MISSING_TAG: &str = "missing";

/// The two lanes of one service for one round: deploys of every kind on
/// the first; scales, restarts and bus deploys on the second (so scales
/// are ordered, and a bus deploy's retry can meet another lane's deploy).
/// With `failing`, some deploys ask for a tag the registry does not have.
pub fn plan(rng: &mut Rng, per_lane: usize, scale_from: u32, failing: bool) -> [Vec<Planned>; 2] {
    let tags: &[Option<&'static str>] = if failing {
        &[None, Some("v1"), Some("v2"), Some(MISSING_TAG)]
    } else {
        &[None, Some("v1"), Some("v2")]
    };
    let mut first = Vec::new();
    for _ in 0..per_lane {
        let kind = rng.pick(&[Kind::ApiDeploy, Kind::Hook, Kind::BusDeploy, Kind::Rollback]);
        first.push(Planned {
            pause: rng.millis(0, 1500),
            kind,
            tag: rng.pick(tags),
            num_instances: None,
        });
    }
    let mut second = Vec::new();
    let mut n = scale_from;
    for _ in 0..per_lane {
        let kind = rng.pick(&[
            Kind::BusScale,
            Kind::ApiScale,
            Kind::BusRestart,
            Kind::BusDeploy,
        ]);
        let num_instances = matches!(kind, Kind::BusScale | Kind::ApiScale).then(|| {
            // Always a change: a scale to the same count appends nothing.
            n = if n == 1 { 2 } else { 1 };
            n
        });
        second.push(Planned {
            pause: rng.millis(0, 1500),
            kind,
            tag: rng.pick(tags),
            num_instances,
        });
    }
    [first, second]
}

/// Runs one lane's commands in order.
pub async fn run_lane(
    world: &World,
    service: usize,
    lane: Vec<Planned>,
    rollback_targets: &[String],
    rng: &mut Rng,
    faulted: bool,
) -> Vec<Record> {
    let mut out = Vec::new();
    for p in lane {
        tokio::time::sleep(p.pause).await;
        let target = (p.kind == Kind::Rollback && !rollback_targets.is_empty())
            .then(|| rollback_targets[rng.below(rollback_targets.len())].clone());
        // Nothing to roll back to yet: an API deploy instead.
        let kind = if p.kind == Kind::Rollback && target.is_none() {
            Kind::ApiDeploy
        } else {
            p.kind
        };
        let request = matches!(kind, Kind::BusDeploy | Kind::BusScale | Kind::BusRestart)
            .then(|| format!("req-{:016x}", rng.next_u64()));
        let mut record = Record {
            service,
            kind,
            request,
            tag: p.tag,
            num_instances: p.num_instances,
            rollback_of: target,
            deploy: None,
            sent: Utc::now(),
            acked: None,
            refused: None,
            unanswered: 0,
            faulted,
        };
        send(world, &mut record).await;
        out.push(record);
    }
    out
}

enum Answer {
    Ok(Option<String>),
    Refused(String),
    /// No answer, or one that leaves the outcome open (5xx).
    Unknown,
}

async fn send(world: &World, r: &mut Record) {
    let svc = &world.services[r.service];
    let started = Instant::now();
    loop {
        let answer = match r.kind {
            Kind::BusDeploy | Kind::BusScale | Kind::BusRestart => bus(world, svc, r).await,
            _ => http(world, svc, r).await,
        };
        match answer {
            Answer::Ok(deploy) => {
                r.deploy = deploy;
                r.acked = Some(Utc::now());
                return;
            }
            Answer::Refused(why) => {
                r.refused = Some(why);
                return;
            }
            Answer::Unknown => {
                r.unanswered += 1;
                if started.elapsed() > GIVE_UP {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn bus(world: &World, svc: &Svc, r: &Record) -> Answer {
    let request = r.request.clone().expect("bus commands carry a request id");
    let (kind, body) = match r.kind {
        Kind::BusDeploy => {
            let mut b = json!({"requestId": request, "service": svc.id});
            if let Some(t) = r.tag {
                b["imageUrl"] = json!(world.image(t));
            }
            ("deploy", b)
        }
        Kind::BusScale => (
            "scale",
            json!({"requestId": request, "service": svc.id, "numInstances": r.num_instances}),
        ),
        _ => ("restart", json!({"requestId": request, "service": svc.id})),
    };
    let subject = format!("{}.cmd.{}.{kind}", world.subjects.prefix(), world.owner);
    let reply = tokio::time::timeout(
        Duration::from_secs(8),
        world.bus.request(subject, body.to_string().into()),
    )
    .await;
    let Ok(Ok(msg)) = reply else {
        return Answer::Unknown;
    };
    let v: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
    match (v["ok"].as_bool(), v["status"].as_u64()) {
        (Some(true), _) => Answer::Ok(v["deploy"].as_str().map(str::to_owned)),
        (_, Some(s)) if s < 500 => Answer::Refused(v.to_string()),
        _ => Answer::Unknown,
    }
}

async fn http(world: &World, svc: &Svc, r: &Record) -> Answer {
    use reqwest::Method;
    let answered = match r.kind {
        Kind::ApiDeploy => {
            let body = match r.tag {
                Some(t) => json!({"imageUrl": world.image(t)}),
                None => json!({}),
            };
            let path = format!("/v1/services/{}/deploys", svc.id);
            world.call(Method::POST, &path, Some(body)).await
        }
        Kind::Hook => {
            let mut path = svc.hook.clone();
            if let Some(t) = r.tag {
                path.push_str("&imgURL=");
                path.push_str(&world.image(t).replace('/', "%2F").replace(':', "%3A"));
            }
            world.call(Method::POST, &path, None).await
        }
        Kind::ApiScale => {
            let path = format!("/v1/services/{}/scale", svc.id);
            let body = json!({"numInstances": r.num_instances});
            world.call(Method::POST, &path, Some(body)).await
        }
        Kind::Rollback => {
            let path = format!("/v1/services/{}/rollback", svc.id);
            let body = json!({"deployId": r.rollback_of});
            world.call(Method::POST, &path, Some(body)).await
        }
        _ => unreachable!("bus commands go on the bus"),
    };
    match answered {
        Some((s, v)) if (200..300).contains(&s) => {
            let deploy = v["deploy"]["id"]
                .as_str()
                .or_else(|| v["id"].as_str())
                .map(str::to_owned);
            Answer::Ok(deploy.filter(|_| r.kind.makes_deploy()))
        }
        Some((s, v)) if (400..500).contains(&s) => Answer::Refused(format!("{s} {v}")),
        _ => Answer::Unknown,
    }
}

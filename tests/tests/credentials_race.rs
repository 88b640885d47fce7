//! SPEC §3: "a concurrent create-service-with-X and remove-X: exactly one
//! wins". Both decide on X's subject with the expected subject sequence, so
//! whichever lands second is decided against a state that includes the
//! other and is refused. Over many trials, with the removal started at a
//! random point of the creation, exactly one wins every time and the final
//! state is consistent: either the service exists with X attached and X
//! live, or X is removed and there is no service and no leftover name claim.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use berth_domain::credential::{self, CredentialState};
use berth_domain::owner::{self, OwnerState};
use berth_ingress::{IngressError, NewService};
use berth_schemas::model::ServiceType;
use berth_schemas::AggregateId;
use berth_tests::resolver::{basic, registry_with_app, App};
use rand::Rng;

const TRIALS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_with_x_and_remove_x_have_exactly_one_winner() {
    let (reg, _) = registry_with_app(basic("ci", "pw")).await;
    let app = App::start().await;
    let alice = app.owner().await;
    let image = format!("{}/team/app:v1", reg.host);

    // How long a creation takes here, to spread the removals over it.
    let t0 = Instant::now();
    let warm = app.credential(&alice, &reg.host, "ci", "pw").await;
    let mut s = NewService::new("warmup", ServiceType::BackgroundWorker, &image);
    s.credential = Some(warm);
    app.ingress.create_service(&alice, s).await.unwrap();
    let span = t0.elapsed().as_micros().max(1000) as u64;

    let (mut created, mut removed, mut compensated) = (0, 0, 0);
    for trial in 0..TRIALS {
        let x = app.credential(&alice, &reg.host, "ci", "pw").await;
        let name = format!("race-{trial}");
        let mut new = NewService::new(&name, ServiceType::BackgroundWorker, &image);
        new.credential = Some(x.clone());
        // Every fourth trial starts the removal at once: it is far shorter
        // than a creation (which asks the resolver first), so on a loaded
        // machine removals still win some trials; the rest spread over it.
        let delay = if trial % 4 == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(rand::rng().random_range(0..span * 3 / 2))
        };
        let (ia, ib) = (app.ingress.clone(), app.ingress.clone());
        let (ca, cb, xb) = (alice.clone(), alice.clone(), x.clone());
        let create = tokio::spawn(async move { ia.create_service(&ca, new).await });
        let remove = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            ib.remove_credential(&cb, &xb).await
        });
        let (c, r) = (create.await.unwrap(), remove.await.unwrap());

        let cred: CredentialState = app
            .events_of(&AggregateId::Credential(x.clone()))
            .await
            .iter()
            .fold(CredentialState::default(), credential::fold);
        let owner: OwnerState = app
            .events_of(&AggregateId::Owner(alice.owner.clone()))
            .await
            .iter()
            .fold(OwnerState::default(), owner::fold);
        match (c, r) {
            (Ok(svc), Err(e)) => {
                created += 1;
                assert!(
                    matches!(&e, IngressError::Rejected(berth_domain::DomainError::CredentialInUse { services }) if services == &vec![svc.id.clone()]),
                    "trial {trial}: removal lost with {e:?}"
                );
                let c = cred.active().expect("X stays live");
                assert!(c.attached.contains(&svc.id), "trial {trial}");
                assert_eq!(owner.service_named(&name), Some(&svc.id), "trial {trial}");
                let state = app.ingress.show_service(&alice, &svc.id).await.unwrap();
                assert_eq!(state.config.unwrap().credential, Some(x.clone()));
            }
            (Err(e), Ok(())) => {
                removed += 1;
                // Lost at the pre-check, the image check or the attach: all
                // refusals that leave nothing behind.
                assert!(
                    matches!(e.http_status(), 404 | 422),
                    "trial {trial}: creation lost with {e:?}"
                );
                assert_eq!(cred, CredentialState::Removed, "trial {trial}");
                assert_eq!(
                    owner.service_named(&name),
                    None,
                    "trial {trial}: leaked name claim"
                );
                // Lost at the attach itself (after the name was claimed):
                // the claim was given back.
                let claimed = app
                    .events_of(&AggregateId::Owner(alice.owner.clone()))
                    .await
                    .iter()
                    .any(|e| matches!(&e.event, berth_schemas::Event::ServiceNameClaimed(c) if c.name == name));
                if claimed {
                    compensated += 1;
                }
            }
            (c, r) => panic!("trial {trial}: not exactly one winner: create {c:?}, remove {r:?}"),
        }
    }
    eprintln!(
        "{TRIALS} trials: creation won {created}, removal won {removed} \
         ({compensated} of those after the name was claimed, undone)"
    );
    // The spread of start times must exercise both orders, or the test
    // proves nothing about the race.
    assert!(
        created > 0 && removed > 0,
        "created {created}, removed {removed}"
    );
}

//! Custom domains on the service: web services only, a bounded number,
//! removal by name, certificate facts recorded for domains it has.

use berth_schemas::events::{CertificateFailed, CertificateIssued};
use berth_schemas::ids::{CustomDomainId, DeployId};
use berth_schemas::model::{CertificateFailure, ServiceType};
use chrono::{DateTime, Utc};

use super::Scenario;
use crate::custom_domain::MAX_CUSTOM_DOMAINS;
use crate::error::ErrorKind;
use crate::service::{Certificate, Command};

fn add(name: &str) -> Command {
    Command::AddCustomDomain {
        domain: CustomDomainId::generate(),
        name: name.into(),
    }
}

#[test]
fn web_services_take_a_bounded_number_of_domains() {
    let mut s = Scenario::created(ServiceType::WebService, &DeployId::generate());
    s.run(add("www.example.com"));
    assert!(s.state.custom_domains.contains_key("www.example.com"));
    // The same name again, with another id: refused; with its own id: nothing.
    assert_eq!(s.refused(add("www.example.com")), ErrorKind::Conflict);
    let id = s.state.custom_domains["www.example.com"].id.clone();
    let again = Command::AddCustomDomain {
        domain: id,
        name: "www.example.com".into(),
    };
    assert_eq!(s.run(again), vec![]);
    for i in 1..MAX_CUSTOM_DOMAINS {
        s.run(add(&format!("d{i}.example.com")));
    }
    assert_eq!(s.refused(add("one-more.example.com")), ErrorKind::Conflict);

    let worker = Scenario::created(ServiceType::BackgroundWorker, &DeployId::generate());
    assert_eq!(worker.refused(add("www.example.com")), ErrorKind::Invalid);
}

#[test]
fn removal_and_certificates_apply_to_the_domains_the_service_has() {
    let mut s = Scenario::created(ServiceType::WebService, &DeployId::generate());
    s.run(add("www.example.com"));
    let not_after = DateTime::<Utc>::from_timestamp(1_900_000_000, 0).unwrap();
    let issued = |d: &str| {
        Command::RecordCertificate(Box::new(
            CertificateIssued {
                domain: d.into(),
                not_after,
                serial: "01".into(),
                renewal: false,
            }
            .into(),
        ))
    };
    assert_eq!(s.run(issued("other.example.com")), vec![]);
    s.run(issued("www.example.com"));
    let d = &s.state.custom_domains["www.example.com"];
    assert!(d.certificate.verified());
    // A failed renewal keeps the certificate held, and the domain verified.
    s.run(Command::RecordCertificate(Box::new(
        CertificateFailed {
            domain: "www.example.com".into(),
            reason: CertificateFailure::Rejected,
            attempt: 1,
            retry_in_secs: 60,
        }
        .into(),
    )));
    let d = &s.state.custom_domains["www.example.com"];
    assert!(matches!(
        d.certificate,
        Certificate::Failed { not_after: Some(t), .. } if t == not_after
    ));
    assert!(d.certificate.verified());

    assert_eq!(
        s.refused(Command::RemoveCustomDomain {
            name: "nope.example.com".into()
        }),
        ErrorKind::NotFound
    );
    s.run(Command::RemoveCustomDomain {
        name: "www.example.com".into(),
    });
    assert!(s.state.custom_domains.is_empty());
}

//! Custom domains route like `<name>.<base-domain>`: in any case, with a
//! port or a trailing dot; a removed one stops at once; a suspended
//! service answers 503 there too; a restarted router (from its snapshot)
//! keeps them; the table lists every routed domain with its service.

use anyhow::Result;
use berth_domain::service::Command;
use berth_schemas::ids::CustomDomainId;
use berth_schemas::model::ServiceType;
use http::StatusCode;

use crate::support::{Backend, Env, HttpClient, Svc};

fn add(name: &str) -> Command {
    Command::AddCustomDomain {
        domain: CustomDomainId::generate(),
        name: name.into(),
    }
}

#[tokio::test]
async fn custom_domains_reach_the_service_until_removed() -> Result<()> {
    let mut env = Env::start().await?;
    let a1 = Backend::start("a", 1).await?;
    let mut a = Svc::create(&env.store, "alpha", ServiceType::WebService).await?;
    a.first_deploy(1, &[a1.addr]).await?;
    a.cmd(add("www.example.test")).await?;
    a.cmd(add("example.test")).await?;
    env.synced(env.store.last_stream_seq().await?).await?;

    let http = HttpClient::new(env.addr);
    for host in [
        "www.example.test",
        "WWW.Example.Test",
        "www.example.test:8443",
        "www.example.test.",
        "example.test",
    ] {
        assert_eq!(
            http.get(host, "/").await?,
            (StatusCode::OK, "a 1".into()),
            "{host}"
        );
    }
    // The default host still works; look-alikes do not.
    assert_eq!(http.get("alpha.localhost", "/").await?.1, "a 1");
    for host in ["x.www.example.test", "example.test.evil", "wwwexample.test"] {
        assert_eq!(
            http.get(host, "/").await?.0,
            StatusCode::NOT_FOUND,
            "{host}"
        );
    }
    let listed = env.routes.load().custom_domains();
    assert_eq!(
        listed.keys().map(String::as_str).collect::<Vec<_>>(),
        ["example.test", "www.example.test"]
    );
    assert!(listed.values().all(|s| *s == a.id));

    // Suspended: 503 at the custom domain as at the default host.
    a.cmd(Command::Suspend).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(
        http.get("www.example.test", "/").await?.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Suspended services keep their domains.
    assert_eq!(env.routes.load().custom_domains().len(), 2);
    a.cmd(Command::Resume {
        deploy: berth_schemas::ids::DeployId::generate(),
    })
    .await?;

    // Removed: 404 at once, the other domain unaffected.
    a.cmd(Command::RemoveCustomDomain {
        name: "www.example.test".into(),
    })
    .await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(
        http.get("www.example.test", "/").await?.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(env.routes.load().custom_domains().len(), 1);

    // A restarted router keeps what is left.
    env.restart_router().await?;
    let http = HttpClient::new(env.addr);
    let (status, _) = http.get("example.test", "/").await?;
    assert_ne!(
        status,
        StatusCode::NOT_FOUND,
        "custom domain lost on restart"
    );
    assert_eq!(
        http.get("www.example.test", "/").await?.0,
        StatusCode::NOT_FOUND
    );

    // Deleted: no domain routes any more.
    a.cmd(Command::Delete).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(
        http.get("example.test", "/").await?.0,
        StatusCode::NOT_FOUND
    );
    assert!(env.routes.load().custom_domains().is_empty());
    Ok(())
}

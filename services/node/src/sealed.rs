//! What a work item carries sealed to this node (its env values, its
//! registry login), opened with the node's own key. Each value is bound to
//! this node, the item's service and instance and what it is, so an item
//! composed for another node, or a value copied from another instance's
//! item, does not open here.

use std::collections::BTreeMap;

use berth_oci::Credential;
use berth_runtime::node_key::NodeKeyPair;
use berth_schemas::commands::NodeRunSpec;
use berth_schemas::ids::{CredentialId, NodeId};
use berth_schemas::model::seal_context;

/// `spec`'s env values, opened with this node's key. An error (a value
/// sealed for another node or instance, or tampered with) names the
/// variable, never a value; retrying cannot help.
pub(crate) fn open_env(
    keys: &NodeKeyPair,
    node: &NodeId,
    spec: &NodeRunSpec,
) -> Result<BTreeMap<String, String>, String> {
    open_each(keys, &spec.env, "env", |name| {
        seal_context::node_env_var(node, &spec.service, &spec.instance, name)
    })
}

/// `spec`'s secret files, opened with this node's key, as [`open_env`].
pub(crate) fn open_files(
    keys: &NodeKeyPair,
    node: &NodeId,
    spec: &NodeRunSpec,
) -> Result<BTreeMap<String, String>, String> {
    open_each(keys, &spec.files, "secret file", |name| {
        seal_context::node_secret_file(node, &spec.service, &spec.instance, name)
    })
}

/// Each of `sealed` opened with `context(name)`; an error names `what`
/// and the name.
fn open_each(
    keys: &NodeKeyPair,
    sealed: &BTreeMap<String, berth_schemas::model::Sealed>,
    what: &str,
    context: impl Fn(&str) -> String,
) -> Result<BTreeMap<String, String>, String> {
    sealed
        .iter()
        .map(|(name, value)| {
            keys.open(value, &context(name))
                .map(|v| (name.clone(), v.expose().to_owned()))
                .map_err(|e| format!("{what} {name} cannot be opened on this node: {e}"))
        })
        .collect()
}

/// The registry login of credential `id` that `spec` carries, opened with
/// this node's key; `Err(message)` for an unauthorized pull.
pub(crate) fn open_login(
    keys: &NodeKeyPair,
    node: &NodeId,
    spec: &NodeRunSpec,
    id: &CredentialId,
) -> Result<Credential, String> {
    let Some(sealed) = &spec.login else {
        return Err(format!(
            "registry credential {id}: the work item carries no login for this node"
        ));
    };
    let context = seal_context::node_login(node, &spec.service, &spec.instance, id);
    keys.open_login(sealed, &context)
        .map(|(username, token)| Credential::new(username, token.expose()))
        .map_err(|e| format!("registry credential {id} cannot be opened on this node: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use berth_runtime::node_key::ForNode;
    use berth_runtime::secrets::{Secret, SecretKey};
    use berth_schemas::ids::{DeployId, InstanceId, ServiceId};
    use berth_schemas::model::EnvVars;

    use super::*;

    /// A work item for `node` (keys `to`), composed as the scheduler does:
    /// the service's env and the credential's token as the log keeps them,
    /// sealed with the installation key, resealed to the node.
    fn item(key: &SecretKey, node: &NodeId, to: &NodeKeyPair, cred: &CredentialId) -> NodeRunSpec {
        let service = ServiceId::generate();
        let instance = InstanceId::generate();
        let mut env = EnvVars::new();
        env.insert(
            "GREETING".into(),
            key.seal(
                &Secret::new("hello"),
                &seal_context::env_var(&service, "GREETING"),
            )
            .unwrap(),
        );
        let token = key
            .seal(
                &Secret::new("s3cret"),
                &seal_context::credential_token(cred),
            )
            .unwrap();
        let seal = ForNode {
            key,
            node,
            to: to.public(),
        };
        NodeRunSpec {
            env: seal.seal_env(&service, &instance, &env).unwrap(),
            files: Default::default(),
            login: Some(
                seal.seal_login(&service, &instance, cred, "puller", &token)
                    .unwrap(),
            ),
            credential: Some(cred.clone()),
            service,
            deploy: DeployId::generate(),
            instance,
            image: "registry.example.com/app".into(),
            digest: "sha256:00".into(),
            command: None,
            port: None,
            plan: None,
            shutdown_delay_secs: 1,
            disk_restore: None,
        }
    }

    #[test]
    fn an_item_opens_on_its_node() {
        let key = SecretKey::from_base64(&SecretKey::generate_base64()).unwrap();
        let (node, keys) = (NodeId::generate(), NodeKeyPair::generate());
        let cred = CredentialId::generate();
        let spec = item(&key, &node, &keys, &cred);
        let env = open_env(&keys, &node, &spec).unwrap();
        assert_eq!(env["GREETING"], "hello");
        let login = open_login(&keys, &node, &spec, &cred).unwrap();
        assert!(!format!("{login:?}").contains("s3cret"));
    }

    #[test]
    fn an_item_sealed_to_node_a_does_not_open_on_node_b() {
        let key = SecretKey::from_base64(&SecretKey::generate_base64()).unwrap();
        let (a, keys_a) = (NodeId::generate(), NodeKeyPair::generate());
        let (b, keys_b) = (NodeId::generate(), NodeKeyPair::generate());
        let cred = CredentialId::generate();
        let spec = item(&key, &a, &keys_a, &cred);
        // Node b with its own key.
        let e = open_env(&keys_b, &b, &spec).unwrap_err();
        assert!(
            e.starts_with("env GREETING cannot be opened on this node"),
            "{e}"
        );
        assert!(!e.contains("hello"), "{e}");
        let e = open_login(&keys_b, &b, &spec, &cred).unwrap_err();
        assert!(e.contains("cannot be opened on this node"), "{e}");
        // Node b holding a copy of a's key file: bound to a's id, still shut.
        assert!(open_env(&keys_a, &b, &spec).is_err());
        assert!(open_login(&keys_a, &b, &spec, &cred).is_err());
        // One instance's values in another instance's item: shut.
        let mut moved = spec.clone();
        moved.instance = InstanceId::generate();
        assert!(open_env(&keys_a, &a, &moved).is_err());
        assert!(open_login(&keys_a, &a, &moved, &cred).is_err());
        // A login for another credential id: shut.
        assert!(open_login(&keys_a, &a, &spec, &CredentialId::generate()).is_err());
        // No login in the item: unauthorized, saying so.
        let mut bare = spec;
        bare.login = None;
        let e = open_login(&keys_a, &a, &bare, &cred).unwrap_err();
        assert!(e.contains("carries no login"), "{e}");
    }
}

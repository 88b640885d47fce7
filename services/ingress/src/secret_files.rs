//! A service's secret files (Render's): files each instance finds
//! read-only in `/etc/secrets/<name>`, for what a program reads from a
//! file rather than its environment (a service account's JSON key, a TLS
//! certificate, a `.npmrc`). Their contents are sealed before anything is
//! appended, shown only to their owner, and sealed again to the node that
//! runs each instance. A change is one decision on the files the service
//! holds at that moment and, like a change of env vars, deploys it.

use std::collections::BTreeMap;

use berth_domain::service::ServiceState;
use berth_domain::DomainError;
use berth_runtime::Secret;
use berth_schemas::events::ServiceSettings;
use berth_schemas::ids::{DeployId, ServiceId};
use berth_schemas::model::{seal_context, SecretFiles};

use crate::{Caller, Ingress, IngressError};

/// One change to a service's secret files.
#[derive(Debug, Clone)]
pub enum FileEdit {
    /// Sets `name` to the content (added, or replaced).
    Set(String, Secret),
    /// Removes `name`; "not found" when the service has no such file.
    Remove(String),
    /// Replaces them all.
    Replace(Vec<(String, Secret)>),
}

impl Ingress {
    /// The caller's service's secret files, opened, by name.
    pub async fn secret_files(
        &self,
        caller: &Caller,
        id: &ServiceId,
    ) -> Result<BTreeMap<String, Secret>, IngressError> {
        self.opened(caller, id, |c| &c.secret_files, seal_context::secret_file)
            .await
    }

    /// Seals `files` for service `id` (the service's rules check their
    /// names, count and size when the change is decided).
    pub(crate) fn seal_secret_files<'a>(
        &self,
        id: &ServiceId,
        files: impl IntoIterator<Item = (&'a String, &'a Secret)>,
    ) -> Result<SecretFiles, IngressError> {
        let mut sealed = SecretFiles::new();
        for (name, content) in files {
            sealed.insert(
                name.clone(),
                self.key
                    .seal(content, &seal_context::secret_file(id, name))?,
            );
        }
        Ok(sealed)
    }

    /// Applies `edit` to the caller's service, merged with the files it
    /// holds when the decision is made (two clients setting different
    /// files at once both land); returns the state after it and the
    /// deploy the change started.
    pub async fn edit_secret_files(
        &self,
        caller: &Caller,
        id: &ServiceId,
        edit: FileEdit,
    ) -> Result<(ServiceState, Option<DeployId>), IngressError> {
        // Sealed once, outside the decision (which may run again).
        let sealed = match &edit {
            FileEdit::Set(name, content) => self.seal_secret_files(id, [(name, content)])?,
            FileEdit::Remove(_) => SecretFiles::new(),
            FileEdit::Replace(files) => {
                self.seal_secret_files(id, files.iter().map(|(n, c)| (n, c)))?
            }
        };
        self.configure(caller, id, "secret-files", |c| {
            let mut files = c.secret_files.clone();
            match &edit {
                FileEdit::Set(..) => files.extend(sealed.clone()),
                FileEdit::Remove(name) => {
                    if files.remove(name).is_none() {
                        return Err(DomainError::NotFound {
                            what: "secret file",
                            id: name.clone(),
                        });
                    }
                }
                FileEdit::Replace(_) => files = sealed.clone(),
            }
            Ok((files != c.secret_files).then(|| ServiceSettings {
                secret_files: Some(files),
                ..ServiceSettings::default()
            }))
        })
        .await
    }
}

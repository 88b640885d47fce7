//! A service's secret files on its settings page: their names (contents
//! hidden until revealed), one set from a form (a name and the file's
//! text), one deleted; each through the `/v1` handler that does the same,
//! and each change deploys the service.

use axum::extract::{Path, State};
use axum::response::Response;
use maud::{html, Markup};

use super::after;
use super::layout::csrf;
use super::session::{Posted, Signed};
use crate::app::{self, AppState, Authed, JsonBody};
use crate::query::Listing;
use crate::routes::secret_files::{self, ContentBody, SecretFileItem};
use crate::views::ServiceView;

/// The service's secret files (at most 50 a service: one page).
pub async fn list(st: &AppState, who: &Signed, id: &str) -> Vec<SecretFileItem> {
    secret_files::list(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.to_owned()),
        Listing(app::Page {
            limit: Some("100".to_owned()),
            cursor: None,
        }),
    )
    .await
    .map(|l| l.0)
    .unwrap_or_default()
}

/// The section: `files` named, their contents shown when `reveal`.
pub fn section(who: &Signed, s: &ServiceView, files: &[SecretFileItem], reveal: bool) -> Markup {
    let base = format!("/services/{}", s.id);
    html! {
        section.card #files aria-labelledby="files-title" {
            h2 #files-title { "Secret files" }
            p.help { "Each instance reads them in " code { "/etc/secrets/<name>" } ", read-only." }
            @if files.is_empty() {
                p.muted { "None." }
            } @else {
                p {
                    @if reveal {
                        a href={ (base) "/settings#files" } { "Hide contents" }
                    } @else {
                        a href={ (base) "/settings?reveal=files#files" } { "Reveal contents" }
                    }
                }
                table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Content" } th scope="col" { span.muted { "Actions" } } } }
                    tbody {
                        @for item in files {
                            @let f = &item.secret_file;
                            tr {
                                td { code { (f.name) } }
                                td {
                                    @if reveal { pre.secret { (f.content) } }
                                    @else { span.muted aria-label="hidden" { (f.content.len()) " bytes" } }
                                }
                                td {
                                    form.inline method="post" action={ (base) "/secret-files/" (f.name) "/delete" } {
                                        (csrf(who))
                                        button.secondary type="submit" data-confirm={ "Delete " (f.name) "? The service redeploys." } { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form method="post" action={ (base) "/secret-files" } {
                (csrf(who))
                div { label for="file-name" { "Name" } input #file-name type="text" name="name" required spellcheck="false" placeholder="credentials.json"; }
                div { label for="file-content" { "Content" } textarea #file-content name="content" rows="6" spellcheck="false" autocomplete="off" {} }
                button.secondary type="submit" { "Set file" }
            }
            p.help { "Setting or deleting a file redeploys the service; the others stay as they are." }
        }
    }
}

fn files_of(id: &str) -> String {
    format!("/services/{id}/settings#files")
}

/// POST /services/{serviceId}/secret-files: sets one file.
pub async fn set(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let name = form.text("name").unwrap_or_default();
    let body = ContentBody {
        content: Some(form.get("content").unwrap_or_default().to_owned()),
    };
    let done = secret_files::set(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path((id.clone(), name)),
        JsonBody(body),
    )
    .await
    .map(|(_, f)| format!("{} set; the service redeploys.", f.0.name));
    after(&st, &who, &files_of(&id), done)
}

/// POST /services/{serviceId}/secret-files/{secretFileName}/delete
pub async fn delete(
    State(st): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = secret_files::delete(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path((id.clone(), name.clone())),
    )
    .await
    .map(|_| format!("{name} deleted; the service redeploys."));
    after(&st, &who, &files_of(&id), done)
}

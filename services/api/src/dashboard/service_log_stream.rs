//! A service's log stream setting on its settings page: follow the
//! owner's stream, send its lines to an endpoint of its own, or drop them
//! (Render's per-resource setting), through the `/v1/logs/streams/
//! resource/{id}` handlers.

use axum::extract::{Path, State};
use axum::response::Response;
use berth_schemas::model::LogStreamSetting;
use maud::{html, Markup};

use super::after;
use super::layout::csrf;
use super::session::{Posted, Signed};
use crate::app::{AppState, Authed, JsonBody};
use crate::routes::log_streams::{self, ResourceBody, ResourceView};
use crate::views::ServiceView;

/// The service's setting, as `GET /v1/logs/streams/resource/{id}` says it.
pub async fn get(st: &AppState, who: &Signed, id: &str) -> Option<ResourceView> {
    log_streams::get_resource(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.to_owned()),
    )
    .await
    .ok()
    .map(|v| v.0)
}

/// The section, with the setting `v` selected.
pub fn section(who: &Signed, s: &ServiceView, v: Option<&ResourceView>) -> Markup {
    let setting = v.and_then(|v| v.setting);
    let token_set = v.is_some_and(|v| v.token_configured);
    let choice = |value: &str, label: &str, on: bool| {
        html! {
            label.check {
                input type="radio" name="setting" value=(value) checked[on];
                (label)
            }
        }
    };
    html! {
        section.card #log-stream aria-labelledby="log-stream-title" {
            h2 #log-stream-title { "Log stream" }
            form method="post" action={ "/services/" (s.id) "/log-stream" } {
                (csrf(who))
                (choice("default", "Follow the owner's log stream", setting.is_none()))
                (choice("send", "Send its lines to this endpoint instead", setting == Some(LogStreamSetting::Send)))
                (choice("drop", "Send none of its lines", setting == Some(LogStreamSetting::Drop)))
                label for="svc-ls-endpoint" { "Endpoint (HOST:PORT, to send)" }
                input #svc-ls-endpoint type="text" name="endpoint" value=[v.and_then(|v| v.endpoint.as_deref())] placeholder="logs.example.com:6514";
                label for="svc-ls-token" { "Token (" (if token_set { "set" } else { "not set" }) ")" }
                input #svc-ls-token type="password" name="token" autocomplete="off" placeholder=(if token_set { "kept as it is" } else { "optional" });
                label.check { input type="checkbox" name="tokenRemove"; "Remove the token" }
                button.secondary type="submit" { "Save log stream setting" }
            }
        }
    }
}

/// POST /services/{serviceId}/log-stream: `PUT` or `DELETE
/// /v1/logs/streams/resource/{id}`, as the form's `setting` says.
pub async fn save(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let (a, p) = (|| Authed(who.caller.clone()), || Path(id.clone()));
    let setting = match form.text("setting").as_deref() {
        Some("send") => Some(LogStreamSetting::Send),
        Some("drop") => Some(LogStreamSetting::Drop),
        _ => None,
    };
    let done = match setting {
        None => {
            let followed = "The service's lines follow the owner's log stream.".to_owned();
            match log_streams::delete_resource(State(st.clone()), a(), p()).await {
                // No override to remove: it follows the owner's already
                // (unless the service is not the caller's: 404 again).
                Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
                    log_streams::get_resource(State(st.clone()), a(), p())
                        .await
                        .map(|_| followed)
                }
                done => done.map(|_| followed),
            }
        }
        Some(setting) => {
            let send = setting == LogStreamSetting::Send;
            let token = if form.checked("tokenRemove") {
                Some(String::new())
            } else {
                form.text("token")
            };
            let body = ResourceBody {
                setting: Some(setting),
                endpoint: form.text("endpoint").filter(|_| send),
                token: token.filter(|_| send),
            };
            log_streams::put_resource(State(st.clone()), a(), p(), JsonBody(body))
                .await
                .map(|v| match v.0.endpoint {
                    Some(e) => format!("The service's lines are sent to {e}."),
                    None => "The service's lines are not sent.".to_owned(),
                })
        }
    };
    after(
        &st,
        &who,
        &format!("/services/{id}/settings#log-stream"),
        done,
    )
}

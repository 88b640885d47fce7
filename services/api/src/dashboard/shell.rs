//! The service page's shell: a command line run in a running instance
//! (through `sh -c`, as typed) by `POST /v1/services/{id}/exec`'s handler,
//! its output shown on a page of its own — Render's Shell without a
//! terminal. The form comes back filled in, to change and run again.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};

use super::after;
use super::layout::{self, csrf, Section};
use super::session::{Posted, Signed};
use crate::app::{AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::routes::exec::{self, ExecBody, ExecView};

/// The form: a command line and where it runs.
pub fn form(who: &Signed, service: &str, command: &str) -> Markup {
    html! {
        form.actions method="post" action={ "/services/" (service) "/exec" } {
            (csrf(who))
            label for="shell-command" { "Command" }
            " "
            input #shell-command .mono type="text" name="command" required
                value=(command) placeholder="ls -la /app";
            " "
            button type="submit" { "Run in an instance" }
            p.muted {
                "Runs with "
                code { "sh -c" }
                " in a running instance of the live deploy (of a cron job: its running run), as its own process runs; killed after 60 s. "
                "For programs that need a terminal, "
                a href={ "/services/" (service) "/terminal" } { "open a terminal" }
                "."
            }
        }
    }
}

/// POST /services/{serviceId}/exec: runs the command line and shows what
/// it printed; a refusal goes back to the service's page, said there.
pub async fn run(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form: posted }: Posted,
) -> Response {
    let back = format!("/services/{id}");
    let Some(line) = posted.text("command") else {
        let empty = ApiError::field("command", "type a command line to run");
        return after(&st, &who, &back, Err(empty));
    };
    let body = ExecBody {
        command: vec!["sh".into(), "-c".into(), line.clone()],
        instance_id: None,
        stdin: None,
        timeout_seconds: None,
    };
    let ran = exec::run(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.clone()),
        JsonBody(body),
    )
    .await;
    match ran {
        Ok(axum::Json(out)) => layout::page(
            StatusCode::OK,
            &who,
            Section::Services,
            "Command output",
            None,
            page(&who, &id, &line, &out),
        ),
        Err(e) => after(&st, &who, &back, Err(e)),
    }
}

fn page(who: &Signed, service: &str, line: &str, out: &ExecView) -> Markup {
    html! {
        p { a href={ "/services/" (service) } { "← Back to the service" } }
        h1 { "Command output" }
        p {
            code.mono { (line) }
            " in "
            span.mono { (out.instance_id) }
            ": "
            @match (out.timed_out, out.exit_code) {
                (true, _) => strong { "killed after 60 s" },
                (false, Some(0)) => strong { "exit code 0" },
                (false, Some(code)) => strong.error { "exit code " (code) },
                (false, None) => strong { "ended" },
            }
            @if out.truncated { " (output cut at 256 KiB per stream)" }
        }
        h2 { "Standard output" }
        pre #shell-stdout .mono { (out.stdout) }
        @if !out.stderr.is_empty() {
            h2 { "Standard error" }
            pre #shell-stderr .mono { (out.stderr) }
        }
        (form(who, service, line))
    }
}

//! Signing in and out. The key is checked by
//! [`crate::app::authenticate`], so a wrong key is refused and counted
//! against the client's address exactly as a wrong bearer token is; the
//! sign-in form has no session yet, so its CSRF token is checked against a
//! short-lived cookie of its own (double submit).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_ingress::{api_key_sha256, same_secret};

use super::session::{
    body, cookie, foreign_origin, token, FormData, Posted, Signed, COOKIE, LOGIN_COOKIE,
    SESSION_TTL,
};
use super::{layout, see_other};
use crate::app::{AppState, ClientAddr};

/// Where to go after signing in: a path of this site only.
fn next_of(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or("/")
        .to_owned()
}

/// The sign-in page, with `error` shown and a fresh CSRF cookie.
fn login_form(st: &AppState, status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let csrf = token();
    let mut resp = layout::bare(
        status,
        "Sign in",
        maud::html! {
            div.signin {
                h1 { "Sign in to berth" }
                @if let Some(e) = error {
                    p.flash.error role="alert" { (e) }
                }
                form method="post" action="/login" {
                    input type="hidden" name="_csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    label for="key" { "API key" }
                    input #key type="password" name="key" required autocomplete="current-password"
                        autofocus spellcheck="false" aria-describedby="key-help";
                    p #key-help .help {
                        "The key in " code { "credentials.json" } " of your berth data directory, or one made with "
                        code { "berth apikey create" } ". It stays on the server: this browser keeps a session cookie only."
                    }
                    button type="submit" { "Sign in" }
                }
            }
        },
    );
    let cookie = st
        .dashboard
        .sessions
        .cookie(LOGIN_COOKIE, &csrf, "/login", 3600);
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    resp
}

/// Query of the sign-in page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// GET /login
pub async fn login_page(
    State(st): State<AppState>,
    signed: Result<Signed, Response>,
    uri: axum::http::Uri,
) -> Response {
    if signed.is_ok() {
        return see_other("/");
    }
    let q: LoginQuery = axum::extract::Query::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    login_form(&st, StatusCode::OK, &next_of(q.next.as_deref()), None)
}

/// POST /login: the key checked as a bearer token is, then a session.
pub async fn login(State(st): State<AppState>, req: Request) -> Response {
    let (mut parts, body_) = req.into_parts();
    let ClientAddr(client) = ClientAddr::from_request_parts(&mut parts, &st)
        .await
        .unwrap_or(ClientAddr(None));
    let expected = cookie(&parts.headers, LOGIN_COOKIE).map(str::to_owned);
    let foreign = foreign_origin(&parts.headers);
    let bytes = match body(Request::from_parts(parts, body_), &st).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let form = FormData::parse(&bytes);
    let next = next_of(form.get("next"));
    let given = form.get("_csrf").unwrap_or_default();
    let csrf_ok = expected.is_some_and(|e| same_secret(e.as_bytes(), given.as_bytes()));
    if foreign || !csrf_ok {
        return login_form(
            &st,
            StatusCode::FORBIDDEN,
            &next,
            Some("The sign-in form expired. Please try again."),
        );
    }
    let key = form.get("key").unwrap_or_default().trim();
    match crate::app::authenticate(&st, client, Some(key)).await {
        Ok(caller) => {
            let berth_schemas::Actor::ApiKey { key: key_id } = caller.actor else {
                return login_form(
                    &st,
                    StatusCode::UNAUTHORIZED,
                    &next,
                    Some("Not an API key."),
                );
            };
            let sessions = &st.dashboard.sessions;
            let token = sessions.open(caller.owner, key_id, api_key_sha256(key));
            tracing::info!(client = ?client, "dashboard sign-in");
            let mut resp = see_other(&next);
            let h = resp.headers_mut();
            h.append(
                header::SET_COOKIE,
                sessions.cookie(COOKIE, &token, "/", SESSION_TTL.as_secs()),
            );
            h.append(
                header::SET_COOKIE,
                sessions.cookie(LOGIN_COOKIE, "", "/login", 0),
            );
            resp
        }
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
            let wait = e.retry_after.map_or(60, |d| d.as_secs().max(1));
            let mut resp = login_form(
                &st,
                StatusCode::TOO_MANY_REQUESTS,
                &next,
                Some(&format!(
                    "Too many failed sign-ins from your address. Try again in {wait} s."
                )),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            resp
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => login_form(
            &st,
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That API key is not valid."),
        ),
        Err(e) => login_form(&st, e.status, &next, Some(&e.message)),
    }
}

/// POST /logout
pub async fn logout(State(st): State<AppState>, Posted { who, .. }: Posted) -> Response {
    st.dashboard.sessions.end(&who.id);
    let mut resp = see_other("/login");
    resp.headers_mut().append(
        header::SET_COOKIE,
        st.dashboard.sessions.cookie(COOKIE, "", "/", 0),
    );
    resp.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(next_of(Some("/services/srv-x")), "/services/srv-x");
        for bad in ["//evil.example/", "https://evil.example/", "/\\evil", ""] {
            assert_eq!(next_of(Some(bad)), "/", "{bad}");
        }
        assert_eq!(next_of(None), "/");
    }
}

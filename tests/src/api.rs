//! Calls to a running berth's HTTP API, as black-box tests make them.

use std::time::Duration;

use serde_json::Value;

/// One call to `url` with the API key `key` (and `body` as JSON, if any),
/// within `timeout`: the status and the answer as JSON (`Null` when it is
/// none).
pub async fn call(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    method: reqwest::Method,
    body: Option<&Value>,
    timeout: Duration,
) -> reqwest::Result<(u16, Value)> {
    let mut req = http.request(method, url).bearer_auth(key).timeout(timeout);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

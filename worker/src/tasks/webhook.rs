//! `webhook.call`: POST JSON to a URL with a timeout and an HMAC signature; retried with backoff
//! within the attempt, and by the run's attempts after that.
//!
//! Params: `url` (http or https), `payload` (any JSON, default `{}`), `headers` (name → value),
//! `timeoutSeconds` (1 to 120). The receiver checks `X-Automation-Signature: sha256=<hex>`, the
//! HMAC-SHA-256 of `<X-Automation-Timestamp>.<body>` with the shared secret
//! (`AUTOMATION_TASKS__WEBHOOK_SECRET`), and may drop repeats by `Idempotency-Key` (the run id).

use std::time::Duration;

use automation_shared::traces::{self, TraceHeaders};
use backon::{ExponentialBuilder, Retryable};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tracing::Instrument;

use super::{TaskContext, TaskError, TaskOutput, TaskSpec};

pub fn spec() -> TaskSpec {
    TaskSpec {
        name: "webhook.call",
        max_attempts: 5,
        time_limit: Duration::from_secs(180),
        run: |ctx| Box::pin(call(ctx)),
    }
}

/// Tries within one attempt (network errors, 5xx, 429) before the attempt counts as failed.
const TRIES: usize = 3;
/// Response bytes kept in the run's result.
const KEEP_BODY: usize = 2048;

/// `sha256=<hex>` of `<timestamp>.<body>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

async fn call(ctx: TaskContext) -> Result<TaskOutput, TaskError> {
    let url =
        ctx.params.get("url").and_then(Value::as_str).ok_or_else(|| TaskError::fatal("params.url is required"))?;
    let url = reqwest::Url::parse(url).map_err(|e| TaskError::fatal(format!("params.url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TaskError::fatal("params.url must be http or https"));
    }
    let timeout = match ctx.params.get("timeoutSeconds").and_then(Value::as_u64) {
        Some(s) if (1..=120).contains(&s) => Duration::from_secs(s),
        Some(_) => return Err(TaskError::fatal("params.timeoutSeconds must be 1 to 120")),
        None => Duration::from_secs(ctx.config.tasks.webhook_timeout_secs),
    };
    let body = serde_json::to_vec(ctx.params.get("payload").unwrap_or(&json!({}))).unwrap_or_default();
    let extra: Vec<(String, String)> = ctx
        .params
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| h.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default();
    let secret = ctx.config.tasks.effective_webhook_secret().to_string();
    // The client span of each try: a child of the run's attempt, its context sent as
    // `traceparent`/`tracestate` so the receiver's spans join the trace. The URL is recorded
    // without its query, which may hold a token.
    let mut shown = url.clone();
    shown.set_query(None);
    let _ = shown.set_password(None);
    let mut tries = 0usize;
    let attempt = || {
        tries += 1;
        let (url, body, extra, secret, http) =
            (url.clone(), body.clone(), extra.clone(), secret.clone(), ctx.http.clone());
        let (run, attempt) = (ctx.run_id, ctx.attempt);
        let span = tracing::info_span!(
            "webhook",
            otel.name = "POST",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            url.full = %shown,
            server.address = url.host_str(),
            http.request.resend_count = tries - 1,
            http.response.status_code = tracing::field::Empty,
        );
        let trace = TraceHeaders::of(&span);
        let recorded = span.clone();
        async move {
            let timestamp = chrono::Utc::now().timestamp();
            let mut request = http
                .post(url)
                .timeout(timeout)
                .header("content-type", "application/json")
                .header("user-agent", concat!("automation-engine/", env!("CARGO_PKG_VERSION")))
                .header("x-automation-run", run.to_string())
                .header("x-automation-attempt", attempt.to_string())
                .header("idempotency-key", run.to_string())
                .header("x-automation-timestamp", timestamp.to_string())
                .header("x-automation-signature", signature(&secret, timestamp, &body));
            for (name, value) in &extra {
                request = request.header(name, value);
            }
            if let Some(parent) = trace.traceparent {
                request = request.header(traces::TRACEPARENT, parent);
            }
            if let Some(state) = trace.tracestate {
                request = request.header(traces::TRACESTATE, state);
            }
            let response = request.body(body).send().await.map_err(|e| {
                recorded.record("otel.status_code", "error");
                TaskError::retryable(format!("request failed: {e}"))
            })?;
            let status = response.status();
            recorded.record("http.response.status_code", status.as_u16());
            if !status.is_success() {
                recorded.record("otel.status_code", "error");
            }
            let text = response.text().await.unwrap_or_default();
            let kept: String = text.chars().take(KEEP_BODY).collect();
            if status.is_success() {
                Ok(json!({"status": status.as_u16(), "body": kept}))
            } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Err(TaskError::retryable(format!("the endpoint answered {status}")))
            } else {
                Err(TaskError::fatal(format!("the endpoint answered {status}: {kept}")))
            }
        }
        .instrument(span)
    };
    let outcome = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(TRIES - 1)
                .with_jitter(),
        )
        .when(|e: &TaskError| e.retryable)
        .await;
    match outcome {
        Ok(mut result) => {
            result["tries"] = json!(tries);
            Ok(TaskOutput { result, events: Vec::new() })
        }
        Err(mut error) => {
            error.message = format!("{} (after {tries} tries)", error.message);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_and_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature("secret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}

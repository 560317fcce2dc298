//! A worker started in-process on its own port, and helpers to build events.

use std::sync::Arc;

use automation_shared::config::Config;
use automation_shared::events::ID_NAMESPACE;
use automation_worker::service;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct TestWorker {
    pub port: u16,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestWorker {
    pub async fn start(config: &Config) -> TestWorker {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let shutdown = CancellationToken::new();
        let handle =
            service::spawn(Arc::new(config.clone()), listener, shutdown.clone()).await.expect("the worker connects");
        TestWorker { port, shutdown, handle: Some(handle) }
    }

    /// SIGTERM, in effect: drains and waits for the worker to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.handle.take() {
            Some(handle) => handle.await?,
            None => Ok(()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A structured CloudEvent with a fresh id.
pub fn event(event_type: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": Uuid::new_v4().to_string(),
        "source": "/tests",
        "type": event_type,
        "time": "2026-11-22T10:00:00Z",
        "data": data
    })
}

/// The id the worker derives for a plain JSON message without a message id.
pub fn plain_event_id(routing_key: &str, body: &str) -> String {
    Uuid::new_v5(&ID_NAMESPACE, format!("{routing_key}\n{body}").as_bytes()).to_string()
}

/// GET against the worker's probes: status and body.
pub async fn http_get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("the probe answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

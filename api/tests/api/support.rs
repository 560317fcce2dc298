//! The API (and, when a test needs it, a worker) started in-process on port 0.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use automation_api::app::{self, AppState};
use automation_api::auth::Role;
use automation_api::routes::users::{self, NewUser};
use automation_shared::config::Config;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestApi {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

pub struct TestUser {
    pub id: String,
    pub email: String,
    pub token: String,
}

impl TestApi {
    /// Starts the API and waits until it is ready (connected to MySQL and the broker).
    pub async fn start(config: &Config) -> TestApi {
        let api = TestApi::start_unready(config).await;
        api.wait_ready().await;
        api
    }

    /// Starts the API without waiting for its dependencies.
    pub async fn start_unready(config: &Config) -> TestApi {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let state = AppState::build(Arc::new(config.clone())).await.expect("state");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app::run(state.clone(), listener, shutdown.clone()));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(40)).build().expect("client");
        TestApi { base, client, state, shutdown, handle: Some(handle) }
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.client.get(self.url("/health/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the API did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(token)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }

    /// A user with this role, logged in.
    pub async fn user(&self, role: Role) -> TestUser {
        let email = format!("{}-{}@example.com", role, uuid::Uuid::new_v4().simple());
        let user = users::create(
            &self.state.pool,
            NewUser { email: email.clone(), name: format!("{role} user"), role, password: PASSWORD.into() },
        )
        .await
        .expect("user created");
        let token = self.login(&email, PASSWORD).await;
        TestUser { id: user.id, email, token }
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .client
            .post(self.url("/auth/login"))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await
            .expect("login answers");
        assert_eq!(response.status(), 200, "login of {email}");
        let body: Value = response.json().await.expect("json");
        body["accessToken"].as_str().expect("token").to_string()
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A worker for tests that need events applied.
pub struct TestWorker {
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestWorker {
    pub async fn start(config: &Config) -> TestWorker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let shutdown = CancellationToken::new();
        let handle = automation_worker::service::spawn(Arc::new(config.clone()), listener, shutdown.clone())
            .await
            .expect("worker");
        TestWorker { shutdown, handle: Some(handle) }
    }

    /// Drains and waits, closing its connections; the worker must exit cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let exit = tokio::time::timeout(std::time::Duration::from_secs(30), handle).await;
            assert!(matches!(exit, Ok(Ok(Ok(())))), "the worker did not stop cleanly: {exit:?}");
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn json(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Log lines captured in memory, for tests that read what was logged.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The JSON lines written so far.
    pub fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.0.lock().expect("lock")).to_string();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    pub fn clear(&self) {
        self.0.lock().expect("lock").clear();
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

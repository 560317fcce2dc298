//! One region of the drill: its MariaDB and RabbitMQ (private instances on their own ports and
//! data directories), and its API and worker processes started from the built binaries. Dropped,
//! everything stops and is removed, also when the drill fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use automation_shared::testing::private_mariadb::PrivateMariaDb;
use automation_shared::testing::private_rabbitmq::{PrivateRabbitMq, free_port};

/// The broker prefix and database of both regions.
pub const PREFIX: &str = "drill";
pub const DATABASE: &str = "drill";
/// The application's database user (no SUPER: read_only holds it off a replica).
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-password";
pub const REPLICATION_USER: &str = "repl";
pub const REPLICATION_PASSWORD: &str = "repl-password";
pub const JWT_SECRET: &str = "drill-jwt-secret-of-at-least-thirty-two-bytes";
pub const AUDIT_KEY: &str = "drill-audit-key-shared-by-both-regions";

pub fn worker_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_automation-worker"))
}

pub fn api_binary() -> PathBuf {
    let api = worker_binary().with_file_name("automation-api");
    assert!(
        api.exists(),
        "{} is not built: make drill-dr builds both binaries (cargo build --workspace --bins)",
        api.display()
    );
    api
}

pub fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

/// A process of ours (an API or a worker), its output in a log file.
pub struct Process {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Process {
    fn start(binary: &Path, env: &[(String, String)], port_key: &str, name: &str) -> Process {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("automation-drill-{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(port_key, port.to_string())
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("the binary starts");
        Process { child, port, log }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (Kubernetes' scale-down), SIGKILL after 30 s.
    pub async fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill();
    }

    pub async fn wait_ready(&self, path: &str) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let status = client
                .get(format!("http://127.0.0.1:{}{path}", self.port))
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            if status == 200 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "not ready on {path}:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

pub struct Region {
    pub name: &'static str,
    pub server_id: u32,
    pub db: PrivateMariaDb,
    pub broker: PrivateRabbitMq,
    pub api: Option<Process>,
    pub workers: Vec<Process>,
    /// rabbitmqctl finds the commands of plugins (shovel_status) through this file.
    plugins_file: PathBuf,
}

impl Drop for Region {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.plugins_file);
    }
}

impl Region {
    /// A database with binary logs and GTIDs (the DR one read-only, as a standby's my.cnf says)
    /// and a broker with the shovel plugin.
    pub async fn start(name: &'static str, server_id: u32, read_only: bool) -> Region {
        let id = format!("--server-id={server_id}");
        let mut options = vec![id.as_str(), "--log-bin=mysql-bin", "--log-slave-updates", "--binlog-format=ROW"];
        if read_only {
            options.push("--read-only");
        }
        let db = PrivateMariaDb::start_with(&options).await;
        let broker = PrivateRabbitMq::start_with_plugins(&["rabbitmq_shovel"]).await;
        let plugins_file =
            std::env::temp_dir().join(format!("automation-drill-plugins-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&plugins_file, "[rabbitmq_shovel].\n").expect("plugins file");
        Region { name, server_id, db, broker, api: None, workers: Vec::new(), plugins_file }
    }

    /// root, without a database: what the dr commands take.
    pub fn admin_url(&self) -> String {
        self.db.url()
    }

    pub fn app_url(&self) -> String {
        format!("mysql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{DATABASE}", self.db.port)
    }

    pub fn amqp_url(&self) -> String {
        self.broker.url()
    }

    pub fn rabbitmqctl(&self) -> String {
        format!(
            "env RABBITMQ_ENABLED_PLUGINS_FILE={} /usr/lib/rabbitmq/bin/rabbitmqctl -n {}",
            self.plugins_file.display(),
            self.broker.node()
        )
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.app_url()),
            ("AMQP_URL", self.amqp_url()),
            ("AUTOMATION_AMQP__PREFIX", PREFIX.to_string()),
            ("JWT_SECRET", JWT_SECRET.to_string()),
            ("AUTOMATION_AUDIT__KEY", AUDIT_KEY.to_string()),
            ("REGION", self.name.to_string()),
            ("AUTOMATION_WORKER__BATCH_TIMEOUT_MS", "5".to_string()),
            ("AUTOMATION_WORKER__SHUTDOWN_GRACE_SECS", "20".to_string()),
            ("AUTOMATION_DATABASE__ACQUIRE_TIMEOUT_MS", "2000".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Runs the worker binary's CLI against this region (the application's user); its stdout.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(worker_binary())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .output()
            .expect("the worker CLI runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    pub async fn start_api(&mut self) {
        let api = Process::start(&api_binary(), &self.env(), "API_PORT", &format!("{}-api", self.name));
        api.wait_ready("/health/ready").await;
        self.api = Some(api);
    }

    pub async fn stop_api(&mut self) {
        if let Some(mut api) = self.api.take() {
            api.terminate().await;
        }
    }

    pub async fn scale_workers(&mut self, replicas: usize) {
        while self.workers.len() > replicas {
            if let Some(mut worker) = self.workers.pop() {
                worker.terminate().await;
            }
        }
        while self.workers.len() < replicas {
            let name = format!("{}-worker-{}", self.name, self.workers.len());
            let worker = Process::start(&worker_binary(), &self.env(), "WORKER_PORT", &name);
            worker.wait_ready("/readiness").await;
            self.workers.push(worker);
        }
    }

    pub fn api_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.api.as_ref().expect("the region's API runs").port)
    }

    /// The whole region lost at once: SIGKILL to its workers, API, database and broker.
    pub async fn lose(&mut self) {
        for worker in &mut self.workers {
            worker.kill();
        }
        if let Some(api) = &mut self.api {
            api.kill();
        }
        self.db.stop().await;
        self.broker.kill().await;
        self.workers.clear();
        self.api = None;
    }

    pub async fn pool(&self) -> sqlx::MySqlPool {
        sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(2)
            .connect(&format!("{}/{DATABASE}", self.admin_url()))
            .await
            .expect("the region's database answers")
    }
}

//! Layered configuration: defaults < `.env` < `automation.toml` < environment, with the legacy
//! names that the existing Kubernetes ConfigMaps and Secrets use.
//!
//! Precedence, lowest first: built-in defaults, the `.env` file (in the working directory, or the
//! file named by `AUTOMATION_ENV_FILE`; the same names as the environment), the TOML file
//! (`automation.toml` or the file named by `AUTOMATION_CONFIG`), the legacy variables
//! (`DATABASE_URL`, `AMQP_URL`, `JWT_SECRET`, ...), then `AUTOMATION_*` variables with `__` for
//! nesting (`AUTOMATION_WORKER__PREFETCH=50`).
//! Every problem is reported as one line that names the key to fix.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

mod dotenv;
pub use dotenv::ENV_FILE_VARIABLE;

/// The JWT secret used when none is configured outside production. Refused in production.
pub const DEV_JWT_SECRET: &str = "automation-engine-development-secret-do-not-use";
/// The shortest HS256 secret accepted in production (RFC 7518 §3.2: at least the hash size).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Which binary is loading the configuration: each validates only the keys it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Api,
    Worker,
    /// Ops subcommands (`migrate`, `topology`, `dlq`, ...): database and broker only.
    Cli,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `development`, `test`, `staging` or `production` (legacy `ENVIRONMENT`).
    pub environment: Environment,
    /// Legacy `DEBUG`; refused in production.
    pub debug: bool,
    /// A tracing filter such as `info` or `info,automation_worker=debug` (legacy `LOG_LEVEL`).
    pub log_level: String,
    /// `json`, `pretty`, or `auto` (JSON unless stdout is a terminal).
    pub log_format: LogFormat,
    /// Shown by `/api/v1/info`.
    pub region: Option<String>,
    pub database: DatabaseConfig,
    pub amqp: AmqpConfig,
    pub api: ApiConfig,
    pub jwt: JwtConfig,
    pub worker: WorkerConfig,
    pub audit: AuditConfig,
    pub tasks: TasksConfig,
    pub rules: RulesConfig,
}

/// Rule evaluation, in the worker and in the API's dry run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RulesConfig {
    /// The most work one rule's evaluation may do, in steps (docs/rules.md, "Cost"); past it the
    /// evaluation fails as "over budget" without running.
    pub max_steps: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self { max_steps: crate::rules::engine::DEFAULT_MAX_STEPS }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Development,
    Test,
    Staging,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Json,
    Pretty,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// `mysql://user:password@host:port/database`. When empty, built from the parts below.
    pub url: Option<String>,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub name: String,
    pub max_connections: u32,
    /// How long a query waits for a free connection before the pool gives up.
    pub acquire_timeout_ms: u64,
    /// How long a statement waits for a row lock before it fails (and is retried).
    pub lock_wait_timeout_secs: u32,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("name", &self.name)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            host: "127.0.0.1".into(),
            port: 3306,
            user: "root".into(),
            password: None,
            name: "automation".into(),
            max_connections: 10,
            acquire_timeout_ms: 5_000,
            lock_wait_timeout_secs: 10,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` (legacy `AMQP_URL`), or the nodes of a cluster
    /// separated by commas: `amqp://u:p@h1:5672/v,h2:5672,h3:5672` (see
    /// [`crate::messaging::addresses`] for every accepted form). Read it through
    /// [`AmqpConfig::addresses`].
    pub url: String,
    /// Prefix of every exchange and queue name: `automation` gives `automation.events`.
    pub prefix: String,
    /// How long a publisher waits for the broker's confirm before answering 503.
    pub publish_timeout_ms: u64,
    /// AMQP users besides the one of `url` whose messages are the system's own (the API's, when
    /// it connects with other credentials than the worker). Never a publisher's.
    pub system_users: Vec<String>,
    /// How many nodes a quorum queue gets when it is created (`x-quorum-initial-group-size`).
    /// Unset: the broker's default (`quorum_cluster_size`, 3 in RabbitMQ 3.10), capped by the
    /// nodes of the cluster. Only queues created from then on take it.
    pub quorum_initial_group_size: Option<u16>,
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("publish_timeout_ms", &self.publish_timeout_ms)
            .field("system_users", &self.system_users)
            .field("quorum_initial_group_size", &self.quorum_initial_group_size)
            .finish()
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: "automation".into(),
            publish_timeout_ms: 5_000,
            system_users: Vec::new(),
            quorum_initial_group_size: None,
        }
    }
}

impl AmqpConfig {
    /// The broker nodes of `url`. A configuration that [`Config::load`] returned always has
    /// valid ones; the error names `AMQP_URL` and the entry, with its password masked.
    pub fn addresses(&self) -> Result<crate::messaging::Addresses, ConfigError> {
        crate::messaging::Addresses::parse(&self.url).map_err(|error| ConfigError::key("AMQP_URL", error))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Legacy `API_HOST`.
    pub host: String,
    /// Legacy `API_PORT`.
    pub port: u16,
    /// Allowed browser origins (legacy `CORS_ORIGINS`, comma-separated). `*` is refused in
    /// production and never combined with credentials.
    #[serde(deserialize_with = "comma_separated")]
    pub cors_origins: Vec<String>,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Whole-request timeout; `Prefer: wait` is capped below it.
    pub request_timeout_secs: u64,
    /// Failed logins allowed per account, and per client address, within `login_window_secs`.
    pub login_max_failures_per_account: u32,
    pub login_max_failures_per_address: u32,
    pub login_window_secs: u64,
    /// Trust the first address of `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_forwarded_for: bool,
    /// Grace period for in-flight requests on SIGTERM.
    pub shutdown_grace_secs: u64,
    /// What is logged about the requests served (docs/operations.md, "Access log").
    pub access_log: AccessLog,
    /// How often `summary` writes its line.
    pub access_log_interval_secs: u64,
    /// A request slower than this is logged on its own in `summary` and `errors`; 0: never.
    pub access_log_slow_ms: u64,
}

/// What the API logs about the requests it served (`AUTOMATION_API__ACCESS_LOG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    /// One line per interval (count, status classes, p50/p99/max latency), and a line of its own
    /// for each 5xx and each slow request.
    #[default]
    Summary,
    /// A line per request, and `event published` at INFO for each event.
    All,
    /// A line per 4xx and 5xx answer and per slow request.
    Errors,
    /// Nothing.
    Off,
}

impl AccessLog {
    /// The name in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLog::Summary => "summary",
            AccessLog::All => "all",
            AccessLog::Errors => "errors",
            AccessLog::Off => "off",
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8000,
            cors_origins: vec!["http://localhost:3000".into(), "http://localhost:5173".into()],
            body_limit_bytes: 256 * 1024,
            request_timeout_secs: 35,
            login_max_failures_per_account: 5,
            login_max_failures_per_address: 20,
            login_window_secs: 900,
            trust_forwarded_for: false,
            shutdown_grace_secs: 20,
            access_log: AccessLog::Summary,
            access_log_interval_secs: 60,
            access_log_slow_ms: 1_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum JwtAlgorithm {
    #[default]
    HS256,
    RS256,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    /// Legacy `JWT_ALGORITHM`.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret (legacy `JWT_SECRET`).
    pub secret: Option<String>,
    /// RS256 public key, PEM (legacy `JWT_PUBLIC_KEY`): verifies tokens.
    pub public_key: Option<String>,
    /// RS256 private key, PEM (`JWT_PRIVATE_KEY`): lets `/auth/login` issue RS256 tokens. Without
    /// it the API only verifies tokens issued elsewhere.
    pub private_key: Option<String>,
    /// Token lifetime in seconds (legacy `JWT_EXPIRATION`).
    pub expiration_secs: u64,
    pub issuer: String,
    pub audience: String,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key", &self.public_key.is_some())
            .field("private_key", &self.private_key.as_ref().map(|_| "<redacted>"))
            .field("expiration_secs", &self.expiration_secs)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            public_key: None,
            private_key: None,
            expiration_secs: 3600,
            issuer: "automation-engine".into(),
            audience: "automation-engine".into(),
        }
    }
}

impl JwtConfig {
    /// The HS256 secret, or the development default outside production.
    pub fn effective_secret(&self) -> &str {
        self.secret.as_deref().unwrap_or(DEV_JWT_SECRET)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// Legacy `WORKER_PORT`: `/health`, `/readiness`, `/metrics`.
    pub port: u16,
    /// Deliveries the broker may push before they are acked. Keep it ≥ `batch_size`: on a quorum
    /// queue a prefetch of 1 consumes up to 8× slower than 50 or more.
    pub prefetch: u16,
    /// Deliveries applied in one transaction (N). 1 gives one transaction per event.
    pub batch_size: usize,
    /// How long a partial batch waits for more deliveries (T).
    pub batch_timeout_ms: u64,
    /// Consumers of the `commands` queue in this process, each with its own channel and
    /// transaction: like that many workers, so MySQL works on several batches at once.
    pub consumers: u16,
    /// Prefetch of the `tasks` queue: each delivery runs one automation.
    pub task_concurrency: u16,
    /// Larger messages are dead-lettered unread.
    pub max_message_bytes: usize,
    /// Delays between attempts of a transiently failing message; the last repeats.
    pub retry_delays_ms: Vec<u64>,
    /// Attempts before a transiently failing message is dead-lettered.
    pub max_attempts: u32,
    /// SIGTERM drain budget; keep it below the pod's `terminationGracePeriodSeconds`.
    pub shutdown_grace_secs: u64,
    /// Event types an AMQP user (the validated `user_id` property) may publish. Users not listed
    /// are not restricted. Patterns: `approval.requested`, `approval.*`, `*`.
    pub publishers: BTreeMap<String, Vec<String>>,
    /// How often the outbox is swept for rows a crashed worker left unpublished.
    pub outbox_sweep_ms: u64,
    /// Broker-side bound on redeliveries (quorum `x-delivery-limit`): catches a message that
    /// kills the worker every time, so it cannot crash-loop the fleet.
    pub delivery_limit: u32,
    /// How the `commands` queue is consumed: `partitioned` (events on one entity are applied in
    /// the order they entered the queue, however many workers run) or `competing` (every
    /// consumer takes from one queue; no order between consumers).
    pub ordering: Ordering,
    /// Partition queues behind `commands` in the `partitioned` layout: the most consumers that
    /// work at once, across all processes. Every worker and the topology must agree on it;
    /// change it only with the partitions drained (docs/operations.md).
    pub partitions: u16,
    /// How long an event that names an entity not created yet (an approval requested on a
    /// workflow created a moment ago) waits for it before it is refused `not_found`.
    pub entity_wait_ms: u64,
}

/// Partition queues of the default layout (`AUTOMATION_WORKER__PARTITIONS`).
pub const DEFAULT_PARTITIONS: u16 = 16;

/// How the `commands` queue is consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Per-entity order: a sequencer spreads events over partition queues by entity, each
    /// consumed by one worker at a time.
    #[default]
    Partitioned,
    /// Every consumer competes on the one queue: no order between consumers.
    Competing,
}

impl Ordering {
    /// The name in configuration (`AUTOMATION_WORKER__ORDERING`).
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::Partitioned => "partitioned",
            Ordering::Competing => "competing",
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            port: 8001,
            prefetch: 200,
            batch_size: 100,
            batch_timeout_ms: 20,
            consumers: 2,
            task_concurrency: 8,
            max_message_bytes: 256 * 1024,
            retry_delays_ms: vec![1_000, 10_000, 60_000, 600_000],
            max_attempts: 5,
            shutdown_grace_secs: 25,
            publishers: BTreeMap::new(),
            outbox_sweep_ms: 2_000,
            delivery_limit: 20,
            ordering: Ordering::Partitioned,
            partitions: DEFAULT_PARTITIONS,
            entity_wait_ms: 10_000,
        }
    }
}

impl WorkerConfig {
    pub fn batch_timeout(&self) -> Duration {
        Duration::from_millis(self.batch_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// The HMAC key `webhook.call` signs with when none is configured. Refused in production.
pub const DEV_WEBHOOK_SECRET: &str = "automation-engine-development-webhook-secret";

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TasksConfig {
    /// HMAC-SHA-256 key for the `X-Automation-Signature` header of `webhook.call`.
    pub webhook_secret: Option<String>,
    /// Per-request timeout of `webhook.call` unless its params say otherwise.
    pub webhook_timeout_secs: u64,
    /// Periodic automations, fired once per tick however many workers run (more can be added
    /// in the `schedules` table).
    pub schedules: Vec<ScheduleConfig>,
}

impl fmt::Debug for TasksConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TasksConfig")
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "<redacted>"))
            .field("webhook_timeout_secs", &self.webhook_timeout_secs)
            .field("schedules", &self.schedules)
            .finish()
    }
}

impl TasksConfig {
    pub fn effective_webhook_secret(&self) -> &str {
        self.webhook_secret.as_deref().unwrap_or(DEV_WEBHOOK_SECRET)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    pub name: String,
    /// Five fields (minute granularity) or six (seconds first), e.g. `*/5 * * * *`.
    pub cron: String,
    pub automation: String,
    #[serde(default)]
    pub params: Option<serde_json::Value>,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            webhook_secret: None,
            webhook_timeout_secs: 10,
            schedules: vec![
                ScheduleConfig {
                    name: "insights".into(),
                    cron: "*/5 * * * *".into(),
                    automation: "insights.recompute".into(),
                    params: None,
                    enabled: true,
                },
                ScheduleConfig {
                    name: "escalate-stale-approvals".into(),
                    cron: "*/15 * * * *".into(),
                    automation: "approvals.escalate_stale".into(),
                    params: None,
                    enabled: true,
                },
            ],
        }
    }
}

#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AuditConfig {
    /// HMAC key for the audit hash chain. With it, records cannot be re-forged without the key;
    /// without it the chain still shows changes and removals made without recomputing hashes.
    pub key: Option<String>,
}

impl fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditConfig").field("key", &self.key.as_ref().map(|_| "<redacted>")).finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            environment: Environment::Development,
            debug: false,
            log_level: "info".into(),
            log_format: LogFormat::Auto,
            region: None,
            database: DatabaseConfig::default(),
            amqp: AmqpConfig::default(),
            api: ApiConfig::default(),
            jwt: JwtConfig::default(),
            worker: WorkerConfig::default(),
            audit: AuditConfig::default(),
            tasks: TasksConfig::default(),
            rules: RulesConfig::default(),
        }
    }
}

/// A configuration problem, printed as one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn key(key: &str, problem: impl fmt::Display) -> Self {
        ConfigError(format!("{key}: {problem}"))
    }
}

/// Legacy variable names and the key each one sets.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("ENVIRONMENT", "environment"),
    ("DEBUG", "debug"),
    ("LOG_LEVEL", "log_level"),
    ("LOG_FORMAT", "log_format"),
    ("REGION", "region"),
    ("DATABASE_URL", "database.url"),
    ("DATABASE_HOST", "database.host"),
    ("DATABASE_PORT", "database.port"),
    ("DATABASE_USER", "database.user"),
    ("DATABASE_PASSWORD", "database.password"),
    ("DATABASE_NAME", "database.name"),
    ("AMQP_URL", "amqp.url"),
    ("API_HOST", "api.host"),
    ("API_PORT", "api.port"),
    ("CORS_ORIGINS", "api.cors_origins"),
    ("WORKER_PORT", "worker.port"),
    ("JWT_SECRET", "jwt.secret"),
    ("JWT_PUBLIC_KEY", "jwt.public_key"),
    ("JWT_PRIVATE_KEY", "jwt.private_key"),
    ("JWT_ALGORITHM", "jwt.algorithm"),
    ("JWT_EXPIRATION", "jwt.expiration_secs"),
];

impl Config {
    /// Loads the configuration from the process environment and the configuration file.
    pub fn load(component: Component) -> Result<Config, ConfigError> {
        let file = std::env::var_os("AUTOMATION_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("automation.toml"));
        if std::env::var_os("AUTOMATION_CONFIG").is_some() && !file.exists() {
            return Err(ConfigError::key("AUTOMATION_CONFIG", format!("the file {} does not exist", file.display())));
        }
        Self::from_figment(Self::figment(file), component)
    }

    /// The provider stack; exposed for tests that feed their own values.
    pub fn figment(file: PathBuf) -> Figment {
        let legacy = Env::raw()
            .filter_map(|key| {
                LEGACY_ENV
                    .iter()
                    .find(|(name, _)| key.as_str().eq_ignore_ascii_case(name))
                    .map(|(_, path)| (*path).into())
            })
            .split(".");
        // `AUTOMATION_CONFIG` names the file; it is not a key.
        let prefixed = Env::prefixed("AUTOMATION_").ignore(&["CONFIG", "ENV_FILE"]).split("__");
        Figment::from(Serialized::defaults(Config::default()))
            .merge(dotenv::DotEnv::from_env())
            .merge(Toml::file(file))
            .merge(legacy)
            .merge(prefixed)
    }

    pub fn from_figment(figment: Figment, component: Component) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|error| {
            // figment may collect several errors; the first names the key, and one line is the
            // promise.
            let first = error.into_iter().next();
            ConfigError(first.map_or_else(|| "unreadable configuration".into(), describe_figment))
        })?;
        config.validate(component)?;
        Ok(config)
    }

    fn validate(&self, component: Component) -> Result<(), ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(ConfigError::key(
                "LOG_LEVEL",
                format!("{:?} is not a log filter (try `info` or `debug`)", self.log_level),
            ));
        }
        self.database.connect_options()?;
        self.amqp.addresses()?;
        if self.amqp.quorum_initial_group_size.is_some_and(|size| size == 0 || size > 255) {
            return Err(ConfigError::key("AUTOMATION_AMQP__QUORUM_INITIAL_GROUP_SIZE", "must be 1 to 255 (or unset)"));
        }
        if self.amqp.prefix.is_empty()
            || !self.amqp.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError::key("AUTOMATION_AMQP__PREFIX", "use letters, digits, '-', '_' or '.'"));
        }
        if self.amqp.publish_timeout_ms == 0 {
            return Err(ConfigError::key("AUTOMATION_AMQP__PUBLISH_TIMEOUT_MS", "must be above 0"));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::key("AUTOMATION_DATABASE__MAX_CONNECTIONS", "must be above 0"));
        }
        match component {
            Component::Api => self.validate_api()?,
            Component::Worker => self.validate_worker()?,
            Component::Cli => {}
        }
        if self.environment == Environment::Production {
            self.validate_production(component)?;
        }
        Ok(())
    }

    fn validate_api(&self) -> Result<(), ConfigError> {
        match self.jwt.algorithm {
            JwtAlgorithm::HS256 => {
                if self.jwt.secret.as_deref().is_some_and(str::is_empty) {
                    return Err(ConfigError::key("JWT_SECRET", "is empty"));
                }
                // The seed's example sets both; HS256 would ignore the key and, without
                // JWT_SECRET, verify with the development secret.
                if self.jwt.public_key.is_some() {
                    return Err(ConfigError::key(
                        "JWT_PUBLIC_KEY",
                        "is set while JWT_ALGORITHM is HS256, which does not use it: set JWT_ALGORITHM=RS256 to verify tokens with the key, or remove JWT_PUBLIC_KEY and set JWT_SECRET",
                    ));
                }
            }
            JwtAlgorithm::RS256 => {
                let Some(key) = &self.jwt.public_key else {
                    return Err(ConfigError::key(
                        "JWT_PUBLIC_KEY",
                        "is required when JWT_ALGORITHM=RS256 (a PEM public key)",
                    ));
                };
                if !key.contains("-----BEGIN") {
                    return Err(ConfigError::key("JWT_PUBLIC_KEY", "is not a PEM key"));
                }
            }
        }
        if self.jwt.expiration_secs == 0 || self.jwt.expiration_secs > 7 * 24 * 3600 {
            return Err(ConfigError::key("JWT_EXPIRATION", "must be 1 to 604800 seconds"));
        }
        for origin in &self.api.cors_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(ConfigError::key(
                    "CORS_ORIGINS",
                    format!("{origin:?} is not an origin like https://app.example.com"),
                ));
            }
        }
        if self.api.body_limit_bytes < 1024 {
            return Err(ConfigError::key("AUTOMATION_API__BODY_LIMIT_BYTES", "must be ≥ 1024"));
        }
        if self.api.access_log_interval_secs == 0 || self.api.access_log_interval_secs > 86_400 {
            return Err(ConfigError::key("AUTOMATION_API__ACCESS_LOG_INTERVAL_SECS", "must be 1 to 86400 seconds"));
        }
        Ok(())
    }

    fn validate_worker(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        if w.batch_size == 0 || w.batch_size > 1000 {
            return Err(ConfigError::key("AUTOMATION_WORKER__BATCH_SIZE", "must be 1 to 1000"));
        }
        if (w.prefetch as usize) < w.batch_size {
            return Err(ConfigError::key(
                "AUTOMATION_WORKER__PREFETCH",
                format!("must be ≥ batch_size ({}), or batches never fill", w.batch_size),
            ));
        }
        if w.consumers == 0 || w.consumers > 32 {
            return Err(ConfigError::key("AUTOMATION_WORKER__CONSUMERS", "must be 1 to 32"));
        }
        if w.partitions == 0 || w.partitions > 256 {
            return Err(ConfigError::key("AUTOMATION_WORKER__PARTITIONS", "must be 1 to 256"));
        }
        if w.entity_wait_ms > 3_600_000 {
            return Err(ConfigError::key("AUTOMATION_WORKER__ENTITY_WAIT_MS", "must be at most 3600000 (an hour)"));
        }
        if w.task_concurrency == 0 {
            return Err(ConfigError::key("AUTOMATION_WORKER__TASK_CONCURRENCY", "must be ≥ 1"));
        }
        if w.max_attempts == 0 {
            return Err(ConfigError::key("AUTOMATION_WORKER__MAX_ATTEMPTS", "must be ≥ 1"));
        }
        if w.retry_delays_ms.is_empty() || w.retry_delays_ms.contains(&0) {
            return Err(ConfigError::key(
                "AUTOMATION_WORKER__RETRY_DELAYS_MS",
                "give one or more delays above 0, e.g. [1000, 10000, 60000, 600000]",
            ));
        }
        for schedule in &self.tasks.schedules {
            if schedule.name.is_empty() || schedule.automation.is_empty() {
                return Err(ConfigError::key(
                    "AUTOMATION_TASKS__SCHEDULES",
                    "every schedule needs a name and an automation",
                ));
            }
        }
        if self.tasks.webhook_timeout_secs == 0 || self.tasks.webhook_timeout_secs > 300 {
            return Err(ConfigError::key("AUTOMATION_TASKS__WEBHOOK_TIMEOUT_SECS", "must be 1 to 300"));
        }
        if w.max_message_bytes < 1024 {
            return Err(ConfigError::key("AUTOMATION_WORKER__MAX_MESSAGE_BYTES", "must be ≥ 1024"));
        }
        Ok(())
    }

    fn validate_production(&self, component: Component) -> Result<(), ConfigError> {
        if self.debug {
            return Err(ConfigError::key("DEBUG", "must not be true in production"));
        }
        if component == Component::Worker
            && self
                .tasks
                .webhook_secret
                .as_deref()
                .is_none_or(|s| s == DEV_WEBHOOK_SECRET || s.len() < MIN_JWT_SECRET_BYTES)
        {
            return Err(ConfigError::key(
                "AUTOMATION_TASKS__WEBHOOK_SECRET",
                format!(
                    "set a random secret of at least {MIN_JWT_SECRET_BYTES} bytes in production (webhooks are signed with it)"
                ),
            ));
        }
        if component != Component::Api {
            return Ok(());
        }
        if self.jwt.algorithm == JwtAlgorithm::HS256 {
            match self.jwt.secret.as_deref() {
                None => {
                    return Err(ConfigError::key("JWT_SECRET", "must be set in production"));
                }
                Some(DEV_JWT_SECRET) => {
                    return Err(ConfigError::key(
                        "JWT_SECRET",
                        "is the development default; set a random secret in production",
                    ));
                }
                Some(secret) if secret.len() < MIN_JWT_SECRET_BYTES => {
                    return Err(ConfigError::key(
                        "JWT_SECRET",
                        format!("must be at least {MIN_JWT_SECRET_BYTES} bytes in production"),
                    ));
                }
                Some(_) => {}
            }
        }
        if self.api.cors_origins.iter().any(|o| o.contains('*')) {
            return Err(ConfigError::key(
                "CORS_ORIGINS",
                "a wildcard origin is refused in production; list the frontend's origins",
            ));
        }
        Ok(())
    }
}

impl DatabaseConfig {
    /// Connection options from `url`, or from host, port, user, password and name.
    pub fn connect_options(&self) -> Result<sqlx::mysql::MySqlConnectOptions, ConfigError> {
        use sqlx::mysql::MySqlConnectOptions;
        match self.url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => url.parse::<MySqlConnectOptions>().map_err(|_| {
                ConfigError::key("DATABASE_URL", "not a MySQL URL (mysql://user:password@host:3306/database)")
            }),
            None => {
                if self.host.is_empty() {
                    return Err(ConfigError::key("DATABASE_HOST", "is empty"));
                }
                if self.name.is_empty() {
                    return Err(ConfigError::key("DATABASE_NAME", "is empty"));
                }
                let mut options = MySqlConnectOptions::new()
                    .host(&self.host)
                    .port(self.port)
                    .username(&self.user)
                    .database(&self.name);
                if let Some(password) = &self.password {
                    options = options.password(password);
                }
                Ok(options)
            }
        }
    }
}

/// Turns a figment error into "KEY: problem", naming the variable the value came from.
fn describe_figment(error: figment::Error) -> String {
    let path = error.path.join(".");
    let origin = error.metadata.as_ref().and_then(|m| m.source.as_ref()).map(ToString::to_string).unwrap_or_default();
    let key = env_name_for(&path).unwrap_or_else(|| path.clone());
    let kind = error.kind.to_string();
    if key.is_empty() {
        // A message of a provider's own (the `.env` file) already says where.
        return kind;
    }
    if origin.is_empty() { format!("{key}: {kind}") } else { format!("{key}: {kind} (from {origin})") }
}

/// The variable a user would set for a dotted key, preferring the legacy name.
fn env_name_for(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    if let Some((name, _)) = LEGACY_ENV.iter().find(|(_, p)| *p == path) {
        return Some((*name).to_string());
    }
    Some(format!("AUTOMATION_{}", path.replace('.', "__").to_ascii_uppercase()))
}

/// Accepts a list or a comma-separated string (the legacy `CORS_ORIGINS` form).
fn comma_separated<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(list) => list,
        ListOrString::String(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect(),
    })
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment's Jail closures must return figment::Error")]
mod tests {
    use super::*;
    use figment::Jail;

    fn load(jail: &Jail, component: Component) -> Result<Config, ConfigError> {
        Config::from_figment(Config::figment(jail.directory().join("automation.toml")), component)
    }

    #[test]
    fn defaults_are_valid_for_every_component() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            for component in [Component::Api, Component::Worker, Component::Cli] {
                assert!(load(jail, component).is_ok());
            }
            Ok(())
        });
    }

    #[test]
    fn a_dotenv_file_is_the_lowest_layer_and_names_its_bad_line() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                ".env",
                "# the seed's file\nexport AMQP_URL=amqp://a:b@from-dotenv:5672/%2f\nDATABASE_URL=\"mysql://u:p@db:3306/app\"\n\
                 AUTOMATION_WORKER__PREFETCH=700 # tuned\nPATH=/ignored\n",
            )?;
            let config = load(jail, Component::Worker).map_err(|e| e.to_string())?;
            assert_eq!(config.amqp.url, "amqp://a:b@from-dotenv:5672/%2f");
            assert_eq!(config.database.url.as_deref(), Some("mysql://u:p@db:3306/app"));
            assert_eq!(config.worker.prefetch, 700);
            // Every other layer overrides it.
            jail.set_env("AMQP_URL", "amqp://a:b@from-env:5672/%2f");
            jail.create_file("automation.toml", "[worker]\nprefetch = 900\n")?;
            let config = load(jail, Component::Worker).map_err(|e| e.to_string())?;
            assert_eq!(config.amqp.url, "amqp://a:b@from-env:5672/%2f");
            assert_eq!(config.worker.prefetch, 900);

            jail.create_file(".env", "AMQP_URL=amqp://x\nthis line is wrong\n")?;
            let error = load(jail, Component::Worker).expect_err("a bad line").to_string();
            assert!(error.contains(".env:2") && error.contains("KEY=value"), "{error}");
            jail.set_env(ENV_FILE_VARIABLE, "missing.env");
            let error = load(jail, Component::Worker).expect_err("a named file that is not there").to_string();
            assert!(error.contains(ENV_FILE_VARIABLE) && error.contains("missing.env"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn legacy_names_set_their_keys() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("DATABASE_URL", "mysql://u:p@db:3307/app");
            jail.set_env("AMQP_URL", "amqp://a:b@mq:5673/%2f");
            jail.set_env("API_PORT", "9000");
            jail.set_env("CORS_ORIGINS", "https://a.example, https://b.example");
            jail.set_env("JWT_EXPIRATION", "120");
            jail.set_env("LOG_LEVEL", "debug");
            let config = load(jail, Component::Api).map_err(|e| e.to_string())?;
            assert_eq!(config.database.url.as_deref(), Some("mysql://u:p@db:3307/app"));
            assert_eq!(config.amqp.url, "amqp://a:b@mq:5673/%2f");
            assert_eq!(config.api.port, 9000);
            assert_eq!(config.api.cors_origins, vec!["https://a.example", "https://b.example"]);
            assert_eq!(config.jwt.expiration_secs, 120);
            assert_eq!(config.log_level, "debug");
            Ok(())
        });
    }

    #[test]
    fn prefixed_variables_nest_with_double_underscores_and_win() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("API_PORT", "9000");
            jail.set_env("AUTOMATION_API__PORT", "9100");
            jail.set_env("AUTOMATION_WORKER__PREFETCH", "300");
            jail.set_env("AUTOMATION_WORKER__RETRY_DELAYS_MS", "[5, 50]");
            let config = load(jail, Component::Worker).map_err(|e| e.to_string())?;
            assert_eq!(config.api.port, 9100);
            assert_eq!(config.worker.prefetch, 300);
            assert_eq!(config.worker.retry_delays_ms, vec![5, 50]);
            Ok(())
        });
    }

    #[test]
    fn a_public_key_with_hs256_is_refused_saying_what_to_set() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("JWT_ALGORITHM", "HS256");
            jail.set_env("JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----");
            let error = load(jail, Component::Api).expect_err("refused").to_string();
            assert!(error.contains("JWT_PUBLIC_KEY: is set while JWT_ALGORITHM is HS256"), "{error}");
            assert!(error.contains("JWT_ALGORITHM=RS256"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn kubernetes_service_links_do_not_break_start_up() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            // What Kubernetes injects for a Service named `automation-api`.
            jail.set_env("AUTOMATION_API_PORT", "tcp://10.0.0.1:8000");
            jail.set_env("AUTOMATION_API_SERVICE_HOST", "10.0.0.1");
            assert!(load(jail, Component::Api).is_ok());
            Ok(())
        });
    }

    #[test]
    fn database_parts_build_the_connection_when_no_url_is_given() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("DATABASE_HOST", "db.internal");
            jail.set_env("DATABASE_PORT", "3310");
            jail.set_env("DATABASE_USER", "app");
            jail.set_env("DATABASE_PASSWORD", "p@ss:/word");
            jail.set_env("DATABASE_NAME", "automation");
            let config = load(jail, Component::Worker).map_err(|e| e.to_string())?;
            let options = config.database.connect_options().map_err(|e| e.to_string())?;
            assert_eq!(options.get_host(), "db.internal");
            assert_eq!(options.get_port(), 3310);
            assert_eq!(options.get_database(), Some("automation"));
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_the_variable_in_one_line() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("API_PORT", "eighty");
            let error = load(jail, Component::Api).expect_err("API_PORT is not a number");
            let line = error.to_string();
            assert!(line.contains("API_PORT"), "{line}");
            assert!(!line.contains('\n'), "{line}");

            jail.clear_env();
            jail.set_env("AMQP_URL", "http://nope");
            let line = load(jail, Component::Worker).expect_err("bad url").to_string();
            assert!(line.starts_with("configuration error: AMQP_URL:"), "{line}");
            Ok(())
        });
    }

    #[test]
    fn amqp_url_takes_a_list_of_nodes_from_every_source_and_a_bad_entry_names_the_key_not_the_password() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let list = "amqp://a:s3cret@mq1:5672/%2f, amqp://a:s3cret@mq2:5673/%2f,mq3";
            jail.set_env("AMQP_URL", list);
            let config = load(jail, Component::Worker).map_err(|e| e.to_string())?;
            assert_eq!(config.amqp.url, list);
            let nodes: Vec<String> =
                config.amqp.addresses().map_err(|e| e.to_string())?.nodes().iter().map(|n| n.to_string()).collect();
            assert_eq!(nodes, ["mq1:5672", "mq2:5673", "mq3:5672"]);

            jail.clear_env();
            jail.create_file(".env", &format!("AMQP_URL={list}\n"))?;
            let config = load(jail, Component::Api).map_err(|e| e.to_string())?;
            assert_eq!(config.amqp.addresses().map_err(|e| e.to_string())?.nodes().len(), 3, "from .env");
            jail.create_file(".env", "")?;

            jail.set_env("AMQP_URL", "amqp://a:s3cret@mq1:5672/%2f,mq2:seventy");
            let line = load(jail, Component::Cli).expect_err("bad entry").to_string();
            assert!(line.starts_with("configuration error: AMQP_URL: entry 2 (mq2:seventy)"), "{line}");
            jail.set_env("AMQP_URL", "amqp://a:s3cret@mq1:5672/%2f,amqp://a:0ther@mq2:5672/%2f");
            let line = load(jail, Component::Api).expect_err("other password").to_string();
            assert!(line.contains("AMQP_URL: entry 2 (amqp://a:***@mq2:5672/%2f)"), "{line}");
            assert!(!line.contains("s3cret") && !line.contains("0ther"), "{line}");
            assert!(!line.contains('\n'), "{line}");

            jail.clear_env();
            jail.set_env("AUTOMATION_AMQP__QUORUM_INITIAL_GROUP_SIZE", "0");
            let line = load(jail, Component::Worker).expect_err("group size 0").to_string();
            assert!(line.contains("AUTOMATION_AMQP__QUORUM_INITIAL_GROUP_SIZE"), "{line}");
            jail.set_env("AUTOMATION_AMQP__QUORUM_INITIAL_GROUP_SIZE", "5");
            assert_eq!(
                load(jail, Component::Worker).map_err(|e| e.to_string())?.amqp.quorum_initial_group_size,
                Some(5)
            );
            Ok(())
        });
    }

    #[test]
    fn the_access_log_takes_its_four_modes_and_a_bad_one_names_the_key() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            assert_eq!(load(jail, Component::Api).map_err(|e| e.to_string())?.api.access_log, AccessLog::Summary);
            for mode in [AccessLog::Summary, AccessLog::All, AccessLog::Errors, AccessLog::Off] {
                jail.set_env("AUTOMATION_API__ACCESS_LOG", mode.as_str());
                assert_eq!(load(jail, Component::Api).map_err(|e| e.to_string())?.api.access_log, mode);
            }
            jail.set_env("AUTOMATION_API__ACCESS_LOG", "verbose");
            let line = load(jail, Component::Api).expect_err("not a mode").to_string();
            assert!(line.starts_with("configuration error: AUTOMATION_API__ACCESS_LOG:"), "{line}");
            assert!(line.contains("summary") && !line.contains('\n'), "{line}");
            jail.set_env("AUTOMATION_API__ACCESS_LOG", "all");
            jail.set_env("AUTOMATION_API__ACCESS_LOG_INTERVAL_SECS", "0");
            let line = load(jail, Component::Api).expect_err("interval 0").to_string();
            assert!(line.contains("AUTOMATION_API__ACCESS_LOG_INTERVAL_SECS"), "{line}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_key() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("automation.toml", "[worker]\nbatch_size = 0\n")?;
            let line = load(jail, Component::Worker).expect_err("batch 0").to_string();
            assert!(line.contains("AUTOMATION_WORKER__BATCH_SIZE"), "{line}");
            Ok(())
        });
    }

    #[test]
    fn production_refuses_weak_settings() {
        Jail::expect_with(|jail| {
            let strong = "x".repeat(40);
            let cases: &[(&[(&str, &str)], &str)] = &[
                (&[], "JWT_SECRET"),
                (&[("JWT_SECRET", DEV_JWT_SECRET)], "JWT_SECRET"),
                (&[("JWT_SECRET", "short")], "JWT_SECRET"),
                (&[("JWT_SECRET", &strong), ("DEBUG", "true")], "DEBUG"),
                (&[("JWT_SECRET", &strong), ("CORS_ORIGINS", "*")], "CORS_ORIGINS"),
            ];
            for (vars, key) in cases {
                jail.clear_env();
                jail.set_env("ENVIRONMENT", "production");
                for (name, value) in *vars {
                    jail.set_env(name, value);
                }
                let line = load(jail, Component::Api).expect_err("must refuse").to_string();
                assert!(line.contains(key), "{line} should name {key}");
            }
            jail.clear_env();
            jail.set_env("ENVIRONMENT", "production");
            jail.set_env("JWT_SECRET", &strong);
            jail.set_env("CORS_ORIGINS", "https://app.example.com");
            assert!(load(jail, Component::Api).is_ok());
            Ok(())
        });
    }
}

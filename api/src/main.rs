//! `automation-api`: serves HTTP (the default) or bootstraps a user.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use automation_api::app::{self, AppState};
use automation_api::auth::Role;
use automation_api::routes::users::{self, NewUser};
use automation_shared::config::{Component, Config};
use automation_shared::exit::Exit;
use automation_shared::telemetry;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "automation-api",
    version,
    about = "The automation-engine HTTP API.",
    after_help = automation_shared::exit::HELP
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Run,
    /// Probe the API serving on API_HOST:API_PORT: exit 0 when it answers 2xx, 1 otherwise.
    /// For container health checks where there is no curl (the image is distroless).
    Healthcheck {
        /// Probe readiness (/health/ready: MySQL and RabbitMQ answer) instead of liveness (/health).
        #[arg(long)]
        ready: bool,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 3)]
        timeout: u64,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user, e.g. the first admin. The password is read from stdin, or from the
    /// environment variable named by --password-env; never from the command line.
    #[command(after_help = USER_CREATE_EXAMPLES)]
    Create {
        /// The login email (unique).
        #[arg(long)]
        email: String,
        /// The display name.
        #[arg(long)]
        name: String,
        /// admin, approver, requester, viewer or service.
        #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
        /// Read the password from this environment variable instead of stdin.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        /// Print the created user as one JSON document.
        #[arg(long)]
        json: bool,
    },
}

const USER_CREATE_EXAMPLES: &str = "\
Examples:
  printf '%s' \"$ADMIN_PASSWORD\" | automation-api user create --email ops@example.com --name Ops --role admin
  automation-api user create --email ci@example.com --name CI --role service --password-env CI_PASSWORD --json

Exit codes: 0 created, 1 failed (e.g. the email is taken, the database unreachable), 2 usage, 3 configuration.";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Healthcheck { ready, timeout }) = args.command {
        return healthcheck(ready, timeout);
    }
    let serving = matches!(args.command, None | Some(Command::Run));
    let config = match Config::load(if serving { Component::Api } else { Component::Cli }) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Exit::Config.into();
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match args.command {
        None | Some(Command::Run) => {
            let traces = telemetry::init_tracing(&config, "automation-api");
            let code = match serve(config).await {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    Exit::of(&error).code().into()
                }
            };
            traces.shutdown().await;
            exit_now(code)
        }
        // Taken above, before the configuration is loaded; here for the match only.
        Some(Command::Healthcheck { ready, timeout }) => return healthcheck(ready, timeout),
        Some(Command::User { command: UserCommand::Create { email, name, role, password_env, json } }) => {
            create_user(config, email, name, role, password_env, json).await
        }
    };
    match result {
        Ok(()) => Exit::Success.into(),
        Err(error) => {
            eprintln!("error: {error:#}");
            Exit::of(&error).into()
        }
    }
}

/// Exits 0 or 1 only (Docker reserves 2), a configuration error included.
fn healthcheck(ready: bool, timeout: u64) -> ExitCode {
    let path = if ready { "/health/ready" } else { "/health" };
    let address = |config: &Config| {
        let host = config
            .api
            .host
            .parse::<IpAddr>()
            .map_err(|_| format!("API_HOST {:?} is not an IP address", config.api.host))?;
        Ok(automation_shared::healthcheck::target(host, config.api.port))
    };
    automation_shared::healthcheck::run(address, path, std::time::Duration::from_secs(timeout))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let host: IpAddr =
        config.api.host.parse().with_context(|| format!("API_HOST {:?} is not an IP address", config.api.host))?;
    let address = SocketAddr::new(host, config.api.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("could not listen on {address} (API_HOST/API_PORT)"))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let state = AppState::build(Arc::new(config)).await?;
    app::run(state, listener, shutdown).await
}

async fn create_user(
    config: Config,
    email: String,
    name: String,
    role: Role,
    password_env: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let password = match password_env {
        Some(var) => std::env::var(&var).with_context(|| format!("the environment variable {var} is not set"))?,
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("password (then Enter and Ctrl-D):");
            }
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input).context("could not read the password from stdin")?;
            input.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    let pool = automation_shared::db::connect(&config.database)
        .await
        .context("could not connect to MySQL (check DATABASE_URL)")?;
    let new = NewUser { email, name, role, password };
    automation_api::extract::validate(&new).map_err(|e| anyhow::anyhow!("{}", describe(e)))?;
    let user = users::create(&pool, new).await.map_err(|e| anyhow::anyhow!("{}", describe(e)))?;
    if json {
        println!("{}", serde_json::to_string(&user.view())?);
    } else {
        println!("created {} <{}> with role {} (id {})", user.name, user.email, user.role, user.id);
    }
    Ok(())
}

fn describe(error: automation_api::problem::ApiError) -> String {
    match error {
        automation_api::problem::ApiError::Validation(errors) => {
            errors.iter().map(|e| format!("--{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
        }
        other => other.to_string(),
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}

/// Ends the process here rather than by dropping the runtime: a connection attempt lapin was
/// still making when SIGTERM came runs on a thread of its own, which panics when the runtime
/// shuts down under it. Everything of ours is drained and flushed by now.
fn exit_now(code: i32) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

//! `automation-worker`: serves (the default) or runs an ops subcommand.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use automation_shared::config::{Component, Config};
use automation_shared::exit::Exit;
use automation_shared::telemetry;
use automation_worker::{cli, service};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "automation-worker",
    version,
    about = "Applies automation events from RabbitMQ to MySQL, exactly once.",
    after_help = automation_shared::exit::HELP
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the work queues and serve /health, /readiness and /metrics (the default).
    Run,
    /// Probe the worker serving on WORKER_PORT: exit 0 when it answers 2xx, 1 otherwise.
    /// For container health checks where there is no curl (the image is distroless).
    Healthcheck {
        /// Probe readiness (/readiness: MySQL and the broker answer, consumers run) instead of
        /// liveness (/health).
        #[arg(long)]
        ready: bool,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 3)]
        timeout: u64,
    },
    /// Apply the database migrations.
    Migrate {
        /// Print one JSON document instead of text (for scripts and jq).
        #[arg(long)]
        json: bool,
    },
    /// Declare the exchanges, queues and bindings (idempotent).
    Topology {
        /// Print one JSON document instead of text (for scripts and jq).
        #[arg(long)]
        json: bool,
        /// Delete them instead, with the messages in the queues (asks for --yes).
        #[arg(long)]
        delete: bool,
        #[arg(long, requires = "delete")]
        yes: bool,
        /// Print the rabbitmqctl commands that hold each configured publisher to its types.
        #[arg(long, conflicts_with = "delete")]
        permissions: bool,
    },
    /// Inspect, replay and discard dead letters.
    #[command(after_help = DLQ_EXAMPLES)]
    Dlq {
        #[command(subcommand)]
        command: Box<cli::dlq::Command>,
    },
    /// Disaster recovery: the database's role, promote, fence, replicate; the DR broker's copy
    /// of the primary's events (scripts/failover.sh and failback.sh use these).
    #[command(after_help = DR_EXAMPLES)]
    Dr {
        #[command(subcommand)]
        command: Box<cli::dr::Command>,
    },
    /// The audit log.
    #[command(after_help = AUDIT_EXAMPLES)]
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Prove that no audit record was changed or removed (exit 1 if one was).
    Verify {
        /// Print one JSON document instead of text (for scripts and jq).
        #[arg(long)]
        json: bool,
    },
}

const DLQ_EXAMPLES: &str = "\
Examples:
  automation-worker dlq list --reason schema_invalid --since 2026-12-01T00:00:00Z
  automation-worker dlq show 0193a5c2-7f3e-7c1a-9d2b-5e8f4a6b1c0d
  automation-worker dlq replay --type approval.decided --dry-run
  automation-worker dlq replay --id 0193a5c2-7f3e-7c1a-9d2b-5e8f4a6b1c0d --as alice
  automation-worker dlq replay --kind exhausted --rate 20 --as alice --json
  automation-worker dlq discard --reason unknown_type --as alice

Replays and discards are audited with their operator: --as NAME, else $AUTOMATION_OPERATOR, else $USER.

Exit codes: 0 done, 1 failed, 2 usage, 3 configuration, 4 no such dead letter.";

const DR_EXAMPLES: &str = "\
Examples (DATABASE_URL an administrator's of the server meant; docs/operations.md, \"Disaster recovery\"):
  automation-worker dr status --json
  automation-worker dr promote --expect-server-id 2
  automation-worker dr fence --expect-server-id 2
  DR_REPLICATION_PASSWORD=... automation-worker dr replicate-from --source-host db.eu-west-1 --source-user repl
  automation-worker dr link --primary-amqp amqp://shovel:...@rabbitmq.eu-west-1:5672/%2f
  automation-worker dr replay --json
  automation-worker dr queues --wait-empty 600

Exit codes: 0 done, 1 failed, 2 usage, 3 configuration, 5 refused (wrong server, a primary already,
still connected to a live primary): nothing was changed.";

const AUDIT_EXAMPLES: &str = "\
Examples:
  automation-worker audit verify
  automation-worker audit verify --json | jq .

Exit codes: 0 the chain is intact, 1 a record was changed or removed (or the check could not
run: the message says which), 3 configuration.";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Healthcheck { ready, timeout }) = args.command {
        return healthcheck(ready, timeout);
    }
    let serving = matches!(args.command, None | Some(Command::Run));
    let config = match Config::load(if serving { Component::Worker } else { Component::Cli }) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Exit::Config.into();
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match args.command {
        None | Some(Command::Run) => {
            let traces = telemetry::init_tracing(&config, "automation-worker");
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
        Some(Command::Migrate { json }) => cli::migrate(&config, json).await.map(|()| true),
        Some(Command::Topology { json, permissions: true, .. }) => {
            cli::publisher_permissions(&config, json).map(|()| true)
        }
        Some(Command::Topology { json, delete: false, .. }) => cli::topology(&config, json).await.map(|()| true),
        Some(Command::Topology { delete: true, yes, .. }) => cli::delete_topology(&config, yes).await.map(|()| true),
        Some(Command::Dlq { command }) => cli::dlq::run(&config, *command).await,
        Some(Command::Dr { command }) => cli::dr::run(&config, *command).await,
        Some(Command::Audit { command: AuditCommand::Verify { json } }) => cli::audit_verify(&config, json).await,
    };
    match result {
        Ok(true) => Exit::Success.into(),
        Ok(false) => Exit::Failure.into(),
        Err(error) => {
            eprintln!("error: {error:#}");
            Exit::of(&error).into()
        }
    }
}

/// Exits 0 or 1 only (Docker reserves 2), a configuration error included. The worker listens on
/// every address, so loopback answers.
fn healthcheck(ready: bool, timeout: u64) -> ExitCode {
    let path = if ready { "/readiness" } else { "/health" };
    let address = |config: &Config| Ok(SocketAddr::from(([127, 0, 0, 1], config.worker.port)));
    automation_shared::healthcheck::run(address, path, std::time::Duration::from_secs(timeout))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Signals first: a pod told to stop while it is still connecting exits 0, not by the signal.
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let address = SocketAddr::from(([0, 0, 0, 0], config.worker.port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("could not listen on {address} (WORKER_PORT)"))?;
    service::spawn(Arc::new(config), listener, shutdown).await?.await?
}

/// SIGTERM (Kubernetes) or Ctrl-C starts the drain.
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

//! `automation-worker dr`'s safety checks on a real primary and replica (two private MariaDB
//! servers with GTID replication): what it refuses (exit 5, nothing changed) and what a promotion
//! leaves behind. The whole failover and failback under load is the drill (`make drill-dr`).

use std::process::Command;

use automation_shared::testing::private_mariadb::PrivateMariaDb;
use serde_json::Value;

/// Runs `automation-worker dr ARGS` against `url`: its exit code and JSON answer.
fn dr(url: &str, args: &[&str]) -> (i32, Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_automation-worker"))
        .arg("dr")
        .args(args)
        .env("DATABASE_URL", format!("{url}/automation"))
        .env("DR_REPLICATION_PASSWORD", "repl-password")
        .output()
        .expect("dr runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let said = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), serde_json::from_str(stdout.trim()).unwrap_or(Value::Null), said)
}

async fn root(url: &str) -> sqlx::MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new().max_connections(1).connect(url).await.expect("the server answers")
}

#[tokio::test]
async fn promote_refuses_the_wrong_server_a_live_primary_and_a_primary_then_promotes_a_replica_whose_primary_is_gone() {
    let mut primary =
        PrivateMariaDb::start_with(&["--server-id=11", "--log-bin=mysql-bin", "--log-slave-updates"]).await;
    let replica =
        PrivateMariaDb::start_with(&["--server-id=12", "--log-bin=mysql-bin", "--log-slave-updates", "--read-only"])
            .await;
    let pool = root(&primary.url()).await;
    for statement in [
        "create user 'repl'@'127.0.0.1' identified by 'repl-password'",
        "grant replication slave on *.* to 'repl'@'127.0.0.1'",
        "create database automation",
        "create table automation.t (id int primary key)",
        "insert into automation.t values (1), (2)",
    ] {
        sqlx::query(statement).execute(&pool).await.expect(statement);
    }

    let (code, status, said) = dr(&primary.url(), &["status", "--json"]);
    assert_eq!((code, status["role"].as_str()), (0, Some("primary")), "{said}");
    let (code, status, said) = dr(&replica.url(), &["status", "--json"]);
    assert_eq!(
        (code, status["role"].as_str(), status["read_only"].as_bool()),
        (0, Some("fenced"), Some(true)),
        "{said}"
    );

    // A replica of the primary, from its first transaction.
    let port = primary.port.to_string();
    let source = ["--source-host", "127.0.0.1", "--source-port", port.as_str(), "--source-user", "repl"];
    let (code, status, said) =
        dr(&replica.url(), &[&["replicate-from", "--expect-server-id", "12", "--json"][..], &source[..]].concat());
    assert_eq!(
        (code, status["io_running"].as_str(), status["sql_running"].as_str()),
        (0, Some("Yes"), Some("Yes")),
        "{said}"
    );
    let replica_pool = root(&replica.url()).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while sqlx::query_scalar::<_, i64>("select count(*) from automation.t").fetch_one(&replica_pool).await.unwrap_or(0)
        < 2
    {
        assert!(tokio::time::Instant::now() < deadline, "the replica did not replicate");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Pointing it at another source is refused without --force.
    let (code, _, said) = dr(
        &replica.url(),
        &["replicate-from", "--source-host", "127.0.0.1", "--source-port", "1", "--source-user", "repl", "--json"],
    );
    assert_eq!(code, 5, "{said}");

    // Refused: the wrong server; a primary; a replica still connected to its live primary.
    let (code, _, said) = dr(&replica.url(), &["promote", "--expect-server-id", "11", "--json"]);
    assert_eq!(code, 5, "{said}");
    assert!(said.contains("server_id is 12, not 11"), "{said}");
    let (code, _, said) = dr(&primary.url(), &["promote", "--json"]);
    assert_eq!(code, 5, "{said}");
    assert!(said.contains("a primary already"), "{said}");
    let (code, _, said) = dr(&replica.url(), &["promote", "--expect-server-id", "12", "--json"]);
    assert_eq!(code, 5, "{said}");
    assert!(said.contains("still connected to its primary"), "{said}");
    let (_, status, _) = dr(&replica.url(), &["status", "--json"]);
    assert_eq!(status["role"], "replica", "nothing was changed by the refusals: {status}");

    // The primary is lost with a last write; the replica applies what it received and is promoted.
    sqlx::query("insert into automation.t values (3)").execute(&pool).await.expect("insert");
    pool.close().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while sqlx::query_scalar::<_, i64>("select count(*) from automation.t").fetch_one(&replica_pool).await.unwrap_or(0)
        < 3
    {
        assert!(tokio::time::Instant::now() < deadline, "the replica did not receive the last write");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    primary.stop().await;
    // The replica notices within moments that its source is gone (io thread `Connecting`).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while dr(&replica.url(), &["status", "--json"]).1["io_running"] == "Yes" {
        assert!(tokio::time::Instant::now() < deadline, "the replica still says its primary is connected");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (code, promotion, said) = dr(&replica.url(), &["promote", "--expect-server-id", "12", "--json"]);
    assert_eq!(code, 0, "{said}");
    assert_eq!(promotion["status"]["role"], "primary", "{promotion}");
    assert_eq!(promotion["status"]["read_only"], false, "{promotion}");
    sqlx::query("insert into automation.t values (4)")
        .execute(&replica_pool)
        .await
        .expect("the promoted server takes writes");
    // Run again: it is a primary now, and says so.
    let (code, _, said) = dr(&replica.url(), &["promote", "--expect-server-id", "12", "--json"]);
    assert_eq!(code, 5, "{said}");
    // Fenced, it is read-only again.
    let (code, status, said) = dr(&replica.url(), &["fence", "--json"]);
    assert_eq!((code, status["role"].as_str()), (0, Some("fenced")), "{said}");
    replica_pool.close().await;
}

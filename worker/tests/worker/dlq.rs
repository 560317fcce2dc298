//! `automation-worker dlq` end to end: a message dies, is listed with its reason, is replayed
//! after its cause is fixed and applied once; replayed again, it is still applied once.

use std::process::Command;
use std::time::Duration;

use automation_shared::testing::TestEnv;
use serde_json::{Value, json};

use crate::retries::{create_workflow, lock_workflow};
use crate::support::{TestWorker, event};

fn dlq(env: &TestEnv, args: &[&str]) -> (bool, Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_automation-worker"))
        .arg("dlq")
        .args(args)
        .env("DATABASE_URL", env.config.database.url.clone().expect("url"))
        .env("AMQP_URL", &env.config.amqp.url)
        .env("AUTOMATION_AMQP__PREFIX", &env.config.amqp.prefix)
        .env("USER", "tester")
        .output()
        .expect("dlq runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    (output.status.success(), serde_json::from_str(&stdout).unwrap_or(Value::Null), stdout)
}

#[tokio::test]
async fn a_dead_letter_is_listed_replayed_after_the_fix_and_applied_once_however_often_it_is_replayed() {
    let mut env = TestEnv::new().await;
    env.config.database.lock_wait_timeout_secs = 1;
    env.config.worker.max_attempts = 2;
    env.config.worker.retry_delays_ms = vec![100];
    let _worker = TestWorker::start(&env.config).await;
    let workflow = create_workflow(&env).await;
    let lock = lock_workflow(&env, workflow).await;
    let e = event("workflow.status_changed", json!({"workflowId": workflow, "status": "PAUSED"}));
    let event_id = e["id"].as_str().expect("id").to_string();
    env.publish_structured(&e).await;
    assert_eq!(
        env.wait_count("select count(*) from dead_letters", 1, Duration::from_secs(60)).await,
        1,
        "it ran out of attempts"
    );

    let (ok, listed, out) = dlq(&env, &["list", "--json", "--kind", "exhausted"]);
    assert!(ok, "{out}");
    let entry = &listed[0];
    assert_eq!(entry["eventId"], event_id);
    assert_eq!(entry["type"], "workflow.status_changed");
    assert_eq!(entry["state"], "dead");
    assert_eq!(entry["attempts"], 2);
    assert!(entry["reason"].as_str().unwrap_or_default().contains("Lock wait timeout"), "{entry}");
    for key in ["id", "errorKind", "originQueue", "routingKey", "firstFailedAt", "deadAt"] {
        assert!(!entry[key].is_null(), "{key} in {entry}");
    }
    let id = entry["id"].as_str().expect("id").to_string();
    let (ok, shown, _) = dlq(&env, &["show", &id, "--json"]);
    assert!(ok);
    assert_eq!(shown["history"].as_array().map(Vec::len), Some(2));
    let (ok, _, human) = dlq(&env, &["list"]);
    assert!(ok && human.contains(&id), "{human}");

    // A dry run changes nothing.
    let (ok, report, _) = dlq(&env, &["replay", "--all", "--dry-run", "--json"]);
    assert!(ok);
    assert_eq!((report["matched"].as_u64(), report["dryRun"].as_bool()), (Some(1), Some(true)));
    assert_eq!(env.count("select count(*) from dead_letters where state = 'dead'").await, 1);

    // The cause is fixed; the replay applies it.
    lock.rollback().await.expect("release");
    let (ok, report, out) = dlq(&env, &["replay", "--id", &id, "--json"]);
    assert!(ok, "{out}");
    assert_eq!(report["done"], 1);
    assert_eq!(env.wait_processed(&event_id).await, "applied");
    let status: String = sqlx::query_scalar("select status from workflows where id = ?")
        .bind(workflow.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(status, "PAUSED");

    // Replayed again: still applied once.
    let (ok, report, _) = dlq(&env, &["replay", "--id", &id, "--json"]);
    assert!(ok);
    assert_eq!(report["done"], 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.count_bound(
            "select count(*) from audit_log where event_id = ? and action = 'workflow.status_changed'",
            &event_id
        )
        .await,
        1
    );
    assert_eq!(env.count_bound("select count(*) from inbox where event_id = ?", &event_id).await, 1);
    let (state, replays): (String, u32) = sqlx::query_as("select state, replay_count from dead_letters where id = ?")
        .bind(&id)
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!((state.as_str(), replays), ("replayed", 2));
    assert_eq!(env.count("select count(*) from dead_letters").await, 1, "nothing died again");
    // Every replay is audited with who did it.
    assert_eq!(
        env.count_bound("select count(*) from audit_log where entity = 'dead_letter' and action = 'dead_letter.replayed' and actor_id = ?", "cli:tester").await,
        2
    );
    // A replayed letter is not discarded.
    let (ok, report, _) = dlq(&env, &["discard", "--id", &id, "--json"]);
    assert!(ok);
    assert_eq!(report["done"], 0);
    // Replay and discard need a selection.
    let (ok, _, _) = dlq(&env, &["discard"]);
    assert!(!ok);
}

#[tokio::test]
async fn poison_is_discarded_by_filter_and_audited() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    env.publish("workflow.created", lapin::BasicProperties::default(), b"not json").await;
    env.publish("workflow.created", lapin::BasicProperties::default(), b"{\"name\": \"\"}").await;
    assert_eq!(env.wait_count("select count(*) from dead_letters", 2, Duration::from_secs(20)).await, 2);
    let (ok, report, out) = dlq(&env, &["discard", "--reason", "invalid_json", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(report["done"], 1);
    assert_eq!(env.count("select count(*) from dead_letters where state = 'discarded'").await, 1);
    assert_eq!(
        env.count("select count(*) from audit_log where action = 'dead_letter.discarded' and actor_id = 'cli:tester'")
            .await,
        1
    );
}

#[tokio::test]
async fn an_anonymous_replay_is_refused_naming_how_to_name_oneself() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    env.publish("workflow.created", lapin::BasicProperties::default(), b"{not json").await;
    env.wait_count("select count(*) from dead_letters", 1, Duration::from_secs(20)).await;
    // As in a distroless pod: no $USER, no --as.
    let output = Command::new(env!("CARGO_BIN_EXE_automation-worker"))
        .args(["dlq", "discard", "--all"])
        .env_remove("USER")
        .env_remove("AUTOMATION_OPERATOR")
        .env("DATABASE_URL", env.config.database.url.clone().expect("url"))
        .env("AMQP_URL", &env.config.amqp.url)
        .env("AUTOMATION_AMQP__PREFIX", &env.config.amqp.prefix)
        .output()
        .expect("dlq runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--as NAME"), "{stderr}");
    assert_eq!(env.count("select count(*) from dead_letters where state = 'dead'").await, 1, "nothing was done");
}

#[tokio::test]
async fn each_kind_of_end_has_its_own_exit_code() {
    let env = TestEnv::new().await;
    let code = |args: &[&str], extra: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_automation-worker"));
        command
            .args(args)
            .env("DATABASE_URL", env.config.database.url.clone().expect("url"))
            .env("AMQP_URL", &env.config.amqp.url)
            .env("AUTOMATION_AMQP__PREFIX", &env.config.amqp.prefix)
            .env("USER", "tester");
        for (key, value) in extra {
            command.env(key, value);
        }
        let output = command.output().expect("the CLI runs");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).to_string())
    };
    let missing = "0193a5c2-7f3e-7c1a-9d2b-5e8f4a6b1c0d";
    assert_eq!(code(&["dlq", "list"], &[]).0, Some(0), "done");
    let (not_found, said) = code(&["dlq", "show", missing], &[]);
    assert_eq!(not_found, Some(4), "no such dead letter: {said}");
    assert!(said.contains(missing), "{said}");
    assert_eq!(code(&["dlq", "replay", "--id", missing], &[]).0, Some(4), "replaying what is not there");
    let (usage, said) = code(&["dlq", "replay"], &[]);
    assert_eq!(usage, Some(2), "which dead letters is not said: {said}");
    assert_eq!(code(&["dlq", "replay", "--bogus"], &[]).0, Some(2), "clap's usage error");
    let (config, said) = code(&["dlq", "list"], &[("DATABASE_URL", "not a url")]);
    assert_eq!(config, Some(3), "a configuration error: {said}");
    assert!(said.contains("DATABASE_URL"), "names the key: {said}");
    let (failed, said) = code(&["dlq", "list"], &[("DATABASE_URL", "mysql://root@127.0.0.1:1/automation")]);
    assert_eq!(failed, Some(1), "the database is unreachable: {said}");
    let help = Command::new(env!("CARGO_BIN_EXE_automation-worker")).arg("--help").output().expect("help");
    assert!(String::from_utf8_lossy(&help.stdout).contains("4  not found"), "--help documents the codes");
}

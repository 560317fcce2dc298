//! Logged-out tokens, checked from memory: refused by another API process within the documented
//! bound, still refused after a restart, and no query of `revoked_tokens` per request.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use automation_api::auth::Role;
use automation_api::auth::revocations::REFRESH;
use automation_shared::config::Config;
use automation_shared::testing::TestEnv;
use reqwest::Method;

use crate::support::{TestApi, json};

/// The bound docs/operations.md states: "refused by every replica within 2 s".
const BOUND: Duration = Duration::from_secs(2);

/// `automation-api` as its own OS process on the test's database and broker.
struct ApiProcess {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl ApiProcess {
    async fn start(config: &Config) -> ApiProcess {
        let port = automation_shared::testing::private_rabbitmq::free_port();
        let log = std::env::temp_dir().join(format!("automation-api-replica-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_automation-api"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", config.database.url.clone().expect("url"))
            .env("AMQP_URL", &config.amqp.url)
            .env("AUTOMATION_AMQP__PREFIX", &config.amqp.prefix)
            .env("API_HOST", "127.0.0.1")
            .env("API_PORT", port.to_string())
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("the second API starts");
        let process = ApiProcess { child, base: format!("http://127.0.0.1:{port}"), log };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(format!("{}/health/ready", process.base)).send().await
                && r.status() == 200
            {
                return process;
            }
            assert!(Instant::now() < deadline, "the second API is not ready: {}", process.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test]
async fn a_token_logged_out_on_one_api_process_is_refused_by_another_within_the_bound() {
    let env = TestEnv::new().await;
    let first = TestApi::start(&env.config).await;
    let second = ApiProcess::start(&env.config).await;
    let user = first.user(Role::Viewer).await;
    let read_on_second = || first.client.get(format!("{}/workflows", second.base)).bearer_auth(&user.token).send();
    assert_eq!(read_on_second().await.expect("answer").status(), 200, "{}", second.output());

    let r = first.request(Method::POST, "/auth/logout", &user.token).send().await.expect("answer");
    assert_eq!(r.status(), 204);
    let logged_out = Instant::now();
    let r = first.request(Method::GET, "/workflows", &user.token).send().await.expect("answer");
    assert_eq!(r.status(), 401, "at once on the process that logged it out");
    loop {
        let (status, problem) = json(read_on_second().await.expect("answer")).await;
        if status == 401 {
            assert!(problem["detail"].as_str().unwrap_or("").contains("logged out"), "{problem}");
            break;
        }
        assert_eq!(status, 200, "{problem}");
        assert!(logged_out.elapsed() < BOUND, "the other process still takes the token after {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("refused by the other process {:?} after the logout", logged_out.elapsed());
    first.stop().await;
}

#[tokio::test]
async fn a_logged_out_token_is_still_refused_after_a_restart() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let user = api.user(Role::Viewer).await;
    let other = api.user(Role::Viewer).await;
    let r = api.request(Method::POST, "/auth/logout", &user.token).send().await.expect("answer");
    assert_eq!(r.status(), 204);
    api.stop().await;

    // A new process knows nothing yet: its first request waits for the list, not past it.
    let api = TestApi::start_unready(&env.config).await;
    let r = api.request(Method::GET, "/workflows", &user.token).send().await.expect("answer");
    assert_eq!(r.status(), 401);
    let r = api.request(Method::GET, "/workflows", &other.token).send().await.expect("answer");
    assert_eq!(r.status(), 200, "a token never logged out is good");
    api.stop().await;
}

#[tokio::test]
async fn requests_read_no_revocations_from_the_database() {
    use automation_shared::testing::private_mariadb::PrivateMariaDb;
    let mariadb = PrivateMariaDb::start().await;
    let env = TestEnv::on(&mariadb.url(), &automation_shared::testing::amqp_url()).await;
    // A server of this test's own: its statement log is this test's alone.
    for statement in ["set global log_output = 'TABLE'", "set global general_log = 1"] {
        sqlx::query(statement).execute(&env.pool).await.expect("general log on");
    }
    let api = TestApi::start(&env.config).await;
    let user = api.user(Role::Viewer).await;
    let logged_out = api.user(Role::Viewer).await;
    let r = api.request(Method::POST, "/auth/logout", &logged_out.token).send().await.expect("answer");
    assert_eq!(r.status(), 204);
    // Written so that this count does not count itself.
    let reads = async || -> i64 {
        sqlx::query_scalar(
            "select count(*) from mysql.general_log where argument like concat('%revoked', '_tokens%') \
             and command_type in ('Query', 'Execute')",
        )
        .fetch_one(&env.pool)
        .await
        .expect("count")
    };
    let before = reads().await;
    assert!(before > 0, "the log shows statements on revoked_tokens (the logout's insert)");
    let started = Instant::now();
    for _ in 0..25 {
        // A viewer may not decide: refused after authentication, before any query of the route.
        let r = api
            .request(Method::PATCH, &format!("/approvals/{}", uuid::Uuid::new_v4()), &user.token)
            .json(&serde_json::json!({"status": "APPROVED"}))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 403);
        let r = api.request(Method::GET, "/workflows", &logged_out.token).send().await.expect("answer");
        assert_eq!(r.status(), 401);
    }
    let took = started.elapsed();
    let during = reads().await - before;
    // Only the background refresh reads the table: once per REFRESH, two statements at most.
    let refreshes = (took.as_millis() / REFRESH.as_millis()) as i64 + 2;
    eprintln!("{during} statements on revoked_tokens during 50 requests in {took:?}");
    assert!(during < 50, "{during} statements on revoked_tokens for 50 requests");
    assert!(during <= 2 * refreshes, "{during} statements in {took:?}: more than the refresh makes");
    api.stop().await;
}

#[tokio::test]
async fn with_mysql_away_a_known_logout_stays_refused_and_other_tokens_wait_for_a_fresh_list() {
    use automation_api::auth::revocations::STALE_AFTER;
    use automation_shared::testing::private_mariadb::PrivateMariaDb;
    let mut mariadb = PrivateMariaDb::start().await;
    let env = TestEnv::on(&mariadb.url(), &automation_shared::testing::amqp_url()).await;
    let api = TestApi::start(&env.config).await;
    let logged_out = api.user(Role::Viewer).await;
    let good = api.user(Role::Viewer).await;
    let r = api.request(Method::POST, "/auth/logout", &logged_out.token).send().await.expect("answer");
    assert_eq!(r.status(), 204);
    // A viewer may not decide: the answer after authentication needs no query (403).
    let decide = |token: &str| {
        api.request(Method::PATCH, &format!("/approvals/{}", uuid::Uuid::new_v4()), token)
            .json(&serde_json::json!({"status": "APPROVED"}))
            .send()
    };
    assert_eq!(decide(&good.token).await.expect("answer").status(), 403);

    mariadb.stop().await;
    let away = Instant::now();
    assert_eq!(decide(&logged_out.token).await.expect("answer").status(), 401, "known: refused, MySQL or not");
    // Until the list is STALE_AFTER old, other tokens are taken; then they wait for a fresh one.
    let (status, problem) = loop {
        let (status, problem) = json(decide(&good.token).await.expect("answer")).await;
        if status != 403 {
            break (status, problem);
        }
        assert!(
            away.elapsed() < STALE_AFTER + Duration::from_secs(3),
            "still taken {:?} after MySQL went away",
            away.elapsed()
        );
        assert_eq!(decide(&logged_out.token).await.expect("answer").status(), 401);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "https://automation-engine.dev/problems/database-unavailable", "{problem}");
    assert_eq!(decide(&logged_out.token).await.expect("answer").status(), 401, "still refused while stale");

    // A process started while MySQL is away takes no token: it has no list yet.
    let fresh = TestApi::start_unready(&env.config).await;
    let r = fresh
        .request(Method::PATCH, &format!("/approvals/{}", uuid::Uuid::new_v4()), &good.token)
        .json(&serde_json::json!({"status": "APPROVED"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());

    mariadb.restart().await;
    let back = Instant::now();
    while decide(&good.token).await.expect("answer").status() != 403 {
        assert!(back.elapsed() < Duration::from_secs(30), "tokens are taken again once MySQL answers");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(decide(&logged_out.token).await.expect("answer").status(), 401);
    fresh.stop().await;
    api.stop().await;
}

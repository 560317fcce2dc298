//! Outages of the broker and the database. With the broker stopped, unreachable or blocked by an
//! alarm, writes answer 503 with Retry-After and never 202; with the database gone, reads answer
//! 503; readiness says why; the API recovers by itself. Private RabbitMQ and MariaDB instances
//! are stopped, so the tests beside these are not disturbed.

use std::time::Duration;

use automation_api::auth::Role;
use automation_shared::testing::TestEnv;
use automation_shared::testing::private_rabbitmq::PrivateRabbitMq;
use reqwest::Method;
use serde_json::json;

use crate::support::{TestApi, json};

#[tokio::test]
async fn with_the_broker_down_or_blocked_writes_answer_503_never_202_and_recover_by_themselves() {
    let mut rabbit = PrivateRabbitMq::start().await;
    let env = TestEnv::on_broker(&rabbit.url()).await;
    let api = TestApi::start(&env.config).await;
    let service = api.user(Role::Service).await;
    let write = || {
        api.request(Method::POST, "/auditLogs", &service.token)
            .json(&json!({"entity": "invoice", "entityId": "inv-1", "action": "exported"}))
            .send()
    };
    let ready = || async { api.client.get(api.url("/health/ready")).send().await.expect("answer") };
    assert_eq!(write().await.expect("answer").status(), 202);

    rabbit.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = json(ready().await).await;
        if status == 503 {
            assert_eq!(body["dependencies"]["rabbitmq"]["status"], "unavailable", "{body}");
            assert_eq!(body["dependencies"]["mysql"]["status"], "ok", "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "readiness never noticed the broker was gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        let r = write().await.expect("answer");
        assert!(r.headers().get("retry-after").is_some());
        let (status, problem) = json(r).await;
        assert_eq!(status, 503, "never a 202 while the broker is down: {problem}");
        assert!(problem["type"].as_str().unwrap_or_default().ends_with("/broker-unavailable"));
    }

    rabbit.restart().await;
    api.wait_ready().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = write().await.expect("answer").status();
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "only 503 until the link is back");
        assert!(tokio::time::Instant::now() < deadline, "the API did not recover after the broker came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A memory alarm blocks publishers: the answer is a prompt 503, not a hang and not a 202.
    rabbit.alarm(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let started = tokio::time::Instant::now();
        let status = write().await.expect("answer").status();
        assert!(started.elapsed() < Duration::from_secs(10), "bounded wait");
        if status == 503 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a blocked broker must give 503");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rabbit.alarm(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while write().await.expect("answer").status() != 202 {
        assert!(tokio::time::Instant::now() < deadline, "writes resume once the alarm clears");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.stop().await;
}

#[tokio::test]
async fn with_mariadb_restarted_the_api_answers_503_meanwhile_and_recovers_by_itself() {
    use automation_shared::testing::private_mariadb::PrivateMariaDb;
    let mut mariadb = PrivateMariaDb::start().await;
    let env = TestEnv::on(&mariadb.url(), &automation_shared::testing::amqp_url()).await;
    let api = TestApi::start(&env.config).await;
    let viewer = api.user(Role::Viewer).await;
    let read = || api.request(Method::GET, "/workflows", &viewer.token).send();
    assert_eq!(read().await.expect("answer").status(), 200);

    mariadb.stop().await;
    let (status, body) = json(api.client.get(api.url("/health/ready")).send().await.expect("answer")).await;
    assert_eq!(status, 503);
    assert_eq!(body["dependencies"]["mysql"]["status"], "unavailable", "{body}");
    let r = read().await.expect("answer");
    assert_eq!(r.status(), 503, "a read without its database is a 503, not a 500");
    assert!(r.headers().get("retry-after").is_some());

    mariadb.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read().await.expect("answer").status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "reads recover without a restart of the API");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.wait_ready().await;
    api.stop().await;
}

#[tokio::test]
async fn with_the_broker_hung_at_start_the_api_is_alive_not_ready_and_sigterm_stops_it_at_once() {
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::new().await;
    // A broker that takes TCP connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hung_port = hung.local_addr().expect("address").port();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            kept.push(socket);
        }
    });
    let port = automation_shared::testing::private_rabbitmq::free_port();
    let log = std::env::temp_dir().join(format!("automation-api-hung-{}.log", uuid::Uuid::new_v4().simple()));
    let file = std::fs::File::create(&log).expect("log");
    let mut api = Command::new(env!("CARGO_BIN_EXE_automation-api"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", env.config.database.url.clone().expect("url"))
        .env("AMQP_URL", format!("amqp://guest:guest@127.0.0.1:{hung_port}/%2f"))
        .env("AUTOMATION_AMQP__PREFIX", &env.config.amqp.prefix)
        .env("API_PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("the API starts");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let started = Instant::now();
    let ready = loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/readiness")).send().await {
            break (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default());
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the API never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert!(ready.1.to_string().contains("rabbitmq"), "{}", ready.1);
    let live = client.get(format!("http://127.0.0.1:{port}/health")).send().await.expect("alive");
    assert_eq!(live.status(), 200);
    // Still inside the first connection attempt (10 s): SIGTERM must not wait for it.
    let _ = Command::new("kill").args(["-TERM", &api.id().to_string()]).status();
    let signalled = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = api.try_wait() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = api.kill();
            panic!("still running 10 s after SIGTERM: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    held.abort();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status:?}: {output}");
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    assert!(!output.contains("panicked"), "{output}");
}

#[tokio::test]
async fn with_the_database_away_at_start_the_api_is_alive_not_ready_ready_once_it_answers_and_sigterm_stops_it() {
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use automation_shared::testing::private_mariadb::PrivateMariaDb;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut mariadb = PrivateMariaDb::start().await;
    let env = TestEnv::on(&mariadb.url(), &automation_shared::testing::amqp_url()).await;
    mariadb.stop().await;
    let port = automation_shared::testing::private_rabbitmq::free_port();
    let log = std::env::temp_dir().join(format!("automation-api-db-away-{}.log", uuid::Uuid::new_v4().simple()));
    let file = std::fs::File::create(&log).expect("log");
    let mut api = Command::new(env!("CARGO_BIN_EXE_automation-api"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", env.config.database.url.clone().expect("url"))
        .env("AMQP_URL", &env.config.amqp.url)
        .env("AUTOMATION_AMQP__PREFIX", &env.config.amqp.prefix)
        .env("API_PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("the API starts");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let probe = async |path: &str| {
        let answer = client.get(format!("http://127.0.0.1:{port}{path}")).send().await.ok()?;
        Some((answer.status().as_u16(), answer.json::<serde_json::Value>().await.unwrap_or_default()))
    };
    let started = Instant::now();
    let live = loop {
        if let Some((200, _)) = probe("/health").await {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no liveness: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, ready) = probe("/health/ready").await.expect("readiness answers");
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["dependencies"]["mysql"]["status"], "unavailable", "{ready}");

    mariadb.restart().await;
    let back = Instant::now();
    loop {
        if let Some((200, _)) = probe("/health/ready").await {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "not ready after MySQL came back: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after = back.elapsed();

    // And away again: SIGTERM while requests would wait for it still ends at once.
    mariadb.stop().await;
    let _ = Command::new("kill").args(["-TERM", &api.id().to_string()]).status();
    let signalled = Instant::now();
    let exit = loop {
        if let Ok(Some(exit)) = api.try_wait() {
            break exit;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = api.kill();
            panic!("still running 10 s after SIGTERM: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    mariadb.restart().await;
    assert!(exit.success(), "{exit:?}: {output}");
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    assert!(!output.contains("panicked"), "{output}");
    eprintln!("liveness after {live:?}, ready {ready_after:?} after MySQL answered, stopped in {took:?}");
}

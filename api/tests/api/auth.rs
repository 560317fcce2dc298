//! Login, logout, the login rate limit, the old login, user management and `user create`.

use automation_api::auth::Role;
use automation_shared::testing::TestEnv;
use reqwest::Method;
use serde_json::json;

use crate::support::{Captured, PASSWORD, TestApi, json};

#[tokio::test]
async fn an_unknown_email_and_a_wrong_password_get_the_same_401() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let user = api.user(Role::Viewer).await;
    let wrong = api
        .client
        .post(api.url("/auth/login"))
        .json(&json!({"email": user.email, "password": "not it"}))
        .send()
        .await
        .expect("answer");
    let unknown = api
        .client
        .post(api.url("/auth/login"))
        .json(&json!({"email": "nobody@example.com", "password": "not it"}))
        .send()
        .await
        .expect("answer");
    let (wrong_status, wrong_body) = json(wrong).await;
    let (unknown_status, unknown_body) = json(unknown).await;
    assert_eq!((wrong_status, unknown_status), (401, 401));
    assert_eq!(wrong_body, unknown_body, "nothing tells the two apart");
    let ok = api
        .client
        .post(api.url("/auth/login"))
        .json(&json!({"email": user.email, "password": PASSWORD}))
        .send()
        .await
        .expect("answer");
    let (status, body) = json(ok).await;
    assert_eq!(status, 200);
    assert_eq!(body["tokenType"], "Bearer");
    assert_eq!(body["user"]["role"], "viewer");
    assert!(body["expiresIn"].as_i64().unwrap_or(0) > 0);
    assert!(body["user"].get("passwordHash").is_none());
}

#[tokio::test]
async fn too_many_failed_logins_for_an_account_answer_429_even_with_the_right_password() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let user = api.user(Role::Viewer).await;
    for _ in 0..env.config.api.login_max_failures_per_account {
        let r = api
            .client
            .post(api.url("/auth/login"))
            .json(&json!({"email": user.email, "password": "guess"}))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 401);
    }
    let r = api
        .client
        .post(api.url("/auth/login"))
        .json(&json!({"email": user.email, "password": PASSWORD}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn a_logged_out_token_is_refused_at_once() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let user = api.user(Role::Viewer).await;
    assert_eq!(api.request(Method::GET, "/workflows", &user.token).send().await.expect("answer").status(), 200);
    let r = api.request(Method::POST, "/auth/logout", &user.token).send().await.expect("answer");
    assert_eq!(r.status(), 204);
    let r = api.request(Method::GET, "/workflows", &user.token).send().await.expect("answer");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    // A fresh login works.
    let token = api.login(&user.email, PASSWORD).await;
    assert_eq!(api.request(Method::GET, "/workflows", &token).send().await.expect("answer").status(), 200);
}

#[tokio::test]
async fn the_old_login_by_query_string_is_gone_and_its_password_is_never_logged() {
    let captured = Captured::default();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(captured.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let r =
        api.client.get(api.url("/users?email=a%40example.com&password=hunter2-secret")).send().await.expect("answer");
    let (status, body) = json(r).await;
    assert_eq!(status, 410);
    assert!(body["detail"].as_str().unwrap_or_default().contains("POST /auth/login"), "{body}");
    let logs = String::from_utf8_lossy(&captured.0.lock().expect("lock")).to_string();
    assert!(logs.contains("/users"), "the request was logged");
    assert!(!logs.contains("hunter2-secret"), "the password must never reach the logs");
}

#[tokio::test]
async fn only_admins_list_and_create_users() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    let viewer = api.user(Role::Viewer).await;
    assert_eq!(api.request(Method::GET, "/users", &viewer.token).send().await.expect("answer").status(), 403);
    let (status, users) = json(api.request(Method::GET, "/users", &admin.token).send().await.expect("answer")).await;
    assert_eq!(status, 200);
    assert_eq!(users.as_array().map(Vec::len), Some(2));
    let new =
        json!({"email": "new@example.com", "name": "New", "role": "approver", "password": "long enough password"});
    let (status, created) =
        json(api.request(Method::POST, "/users", &admin.token).json(&new).send().await.expect("answer")).await;
    assert_eq!(status, 201);
    assert_eq!(created["role"], "approver");
    let (status, _) =
        json(api.request(Method::POST, "/users", &admin.token).json(&new).send().await.expect("answer")).await;
    assert_eq!(status, 409, "the email is taken");
    let short = json!({"email": "x@example.com", "name": "X", "role": "viewer", "password": "short"});
    let (status, problem) =
        json(api.request(Method::POST, "/users", &admin.token).json(&short).send().await.expect("answer")).await;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["field"], "password");
}

#[tokio::test]
async fn user_create_takes_the_password_from_an_environment_variable_never_from_argv() {
    let env = TestEnv::new().await;
    let binary = env!("CARGO_BIN_EXE_automation-api");
    let database = env.config.database.url.clone().expect("url");
    let output = std::process::Command::new(binary)
        .args([
            "user",
            "create",
            "--email",
            "first@example.com",
            "--name",
            "First Admin",
            "--role",
            "admin",
            "--password-env",
            "FIRST_PASSWORD",
        ])
        .env("DATABASE_URL", &database)
        .env("FIRST_PASSWORD", PASSWORD)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("first@example.com"));
    let from_stdin = std::process::Command::new(binary)
        .args(["user", "create", "--email", "second@example.com", "--name", "Second", "--role", "viewer"])
        .env("DATABASE_URL", &database)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(format!("{PASSWORD}\n").as_bytes())?;
            child.wait_with_output()
        })
        .expect("runs");
    assert!(from_stdin.status.success());
    let argv = std::process::Command::new(binary)
        .args([
            "user",
            "create",
            "--email",
            "third@example.com",
            "--name",
            "T",
            "--role",
            "viewer",
            "--password",
            PASSWORD,
        ])
        .env("DATABASE_URL", &database)
        .output()
        .expect("runs");
    assert!(!argv.status.success(), "there is no --password flag");
    let api = TestApi::start(&env.config).await;
    api.login("first@example.com", PASSWORD).await;
    api.login("second@example.com", PASSWORD).await;
}

#[tokio::test]
async fn a_token_of_a_user_deactivated_deleted_or_given_another_role_is_refused_within_seconds() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let (deactivated, deleted, demoted, untouched) = (
        api.user(Role::Approver).await,
        api.user(Role::Approver).await,
        api.user(Role::Admin).await,
        api.user(Role::Viewer).await,
    );
    for user in [&deactivated, &deleted, &demoted, &untouched] {
        let r = api.request(Method::GET, "/approvals", &user.token).send().await.expect("answer");
        assert_eq!(r.status(), 200);
    }
    // Users the API has known for a while (a deleted user is one it has seen).
    tokio::time::sleep(automation_api::auth::sessions::REFRESH * 2).await;
    // What ops do in the database; nothing else tells the API.
    let update = |sql: &'static str, id: String| {
        let pool = env.pool.clone();
        async move { sqlx::query(sql).bind(id).execute(&pool).await.expect("update") }
    };
    update("update users set active = false where id = ?", deactivated.id.clone()).await;
    update("delete from users where id = ?", deleted.id.clone()).await;
    update("update users set role = 'viewer' where id = ?", demoted.id.clone()).await;
    let changed = std::time::Instant::now();
    for (user, says) in [(&deactivated, "deactivated"), (&deleted, "no longer exists"), (&demoted, "role")] {
        loop {
            let (status, problem) =
                json(api.request(Method::GET, "/approvals", &user.token).send().await.expect("answer")).await;
            if status == 401 {
                assert!(problem["detail"].as_str().unwrap_or("").contains(says), "{problem}");
                break;
            }
            assert_eq!(status, 200);
            assert!(changed.elapsed() < std::time::Duration::from_secs(5), "still taken after 5 s");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let r = api.request(Method::GET, "/approvals", &untouched.token).send().await.expect("answer");
    assert_eq!(r.status(), 200, "the others' tokens are good");
    // Active again: the token is good again (it was never logged out).
    update("update users set active = true where id = ?", deactivated.id.clone()).await;
    tokio::time::sleep(automation_api::auth::sessions::REFRESH * 2).await;
    let r = api.request(Method::GET, "/approvals", &deactivated.token).send().await.expect("answer");
    assert_eq!(r.status(), 200);
}

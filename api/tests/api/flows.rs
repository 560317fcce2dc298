//! What the React frontend does, end to end through the broker and the worker.

use std::time::Duration;

use automation_api::auth::Role;
use automation_shared::testing::TestEnv;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestApi, TestUser, TestWorker, json};

struct Setup {
    env: TestEnv,
    api: TestApi,
    worker: TestWorker,
    admin: TestUser,
    requester: TestUser,
    approver: TestUser,
}

async fn setup() -> Setup {
    let env = TestEnv::new().await;
    let worker = TestWorker::start(&env.config).await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    let requester = api.user(Role::Requester).await;
    let approver = api.user(Role::Approver).await;
    Setup { env, api, worker, admin, requester, approver }
}

impl Setup {
    async fn workflow(&self) -> String {
        let r = self
            .api
            .request(Method::POST, "/workflows", &self.admin.token)
            .header("prefer", "wait=10")
            .json(&json!({"name": "Purchases", "approvalSlaHours": 24}))
            .send()
            .await
            .expect("answer");
        let (status, body) = json(r).await;
        assert_eq!(status, 200, "{body}");
        body["id"].as_str().expect("id").to_string()
    }

    async fn approval(&self, workflow: &str) -> Value {
        let r = self
            .api
            .request(Method::POST, "/approvals", &self.requester.token)
            .header("prefer", "wait=10")
            .json(&json!({"workflowId": workflow, "title": "Laptop", "amount": 1299.99, "currency": "EUR"}))
            .send()
            .await
            .expect("answer");
        let (status, body) = json(r).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

#[tokio::test]
async fn an_approver_decides_with_prefer_wait_and_reads_back_the_change_and_its_audit_record() {
    let s = setup().await;
    let workflow = s.workflow().await;
    let approval = s.approval(&workflow).await;
    assert_eq!(approval["status"], "PENDING");
    assert_eq!(approval["requesterId"], s.requester.id);
    let id = approval["id"].as_str().expect("id");

    let r = s
        .api
        .request(Method::PATCH, &format!("/approvals/{id}"), &s.approver.token)
        .header("prefer", "wait=10")
        .json(&json!({"status": "APPROVED", "reason": "within budget", "expectedVersion": 1}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.headers().get("preference-applied").and_then(|v| v.to_str().ok()), Some("wait"));
    let (status, decided) = json(r).await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided["status"], "APPROVED");
    assert_eq!(decided["decidedBy"], s.approver.id);

    let (status, read) =
        json(s.api.request(Method::GET, &format!("/approvals/{id}"), &s.approver.token).send().await.expect("answer"))
            .await;
    assert_eq!(status, 200);
    assert_eq!(read["status"], "APPROVED");
    assert_eq!(read["version"], 2);
    let (status, audit) = json(
        s.api
            .request(Method::GET, &format!("/auditLogs?entity=approval&entityId={id}"), &s.approver.token)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = audit.as_array().expect("array").iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(actions, vec!["approval.approved", "approval.created"], "newest first");
    assert_eq!(audit[0]["actorId"], s.approver.id);
    assert_eq!(audit[0]["actorType"], "user");
    assert_eq!(audit[0]["details"]["reason"], "within budget");
    s.worker.stop().await;
}

#[tokio::test]
async fn a_requester_deciding_an_approval_gets_403() {
    let s = setup().await;
    let workflow = s.workflow().await;
    let approval = s.approval(&workflow).await;
    let r = s
        .api
        .request(Method::PATCH, &format!("/approvals/{}", approval["id"].as_str().expect("id")), &s.requester.token)
        .json(&json!({"status": "APPROVED"}))
        .send()
        .await
        .expect("answer");
    let (status, problem) = json(r).await;
    assert_eq!(status, 403);
    assert_eq!(problem["status"], 403);
    assert!(problem["type"].as_str().unwrap_or_default().ends_with("/forbidden"));
}

#[tokio::test]
async fn the_same_idempotency_key_twice_gives_one_effect_and_with_another_body_a_422() {
    let s = setup().await;
    let workflow = s.workflow().await;
    let send = || {
        s.api
            .request(Method::POST, "/approvals", &s.requester.token)
            .header("idempotency-key", "order-4711")
            .json(&json!({"workflowId": workflow, "title": "Chair"}))
            .send()
    };
    let (first_status, first) = json(send().await.expect("answer")).await;
    let (second_status, second) = json(send().await.expect("answer")).await;
    assert_eq!((first_status, second_status), (202, 202));
    assert_eq!(first["eventId"], second["eventId"]);
    let status_url = first["statusUrl"].as_str().expect("url").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, status) =
            json(s.api.request(Method::GET, &status_url, &s.requester.token).send().await.expect("answer")).await;
        if status["status"] == "processed" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.env.count_bound("select count(*) from approvals where workflow_id = ?", &workflow).await, 1);
    // A third retry, waiting, finds it done and answers with the resource.
    let r = s
        .api
        .request(Method::POST, "/approvals", &s.requester.token)
        .header("idempotency-key", "order-4711")
        .header("prefer", "wait=5")
        .json(&json!({"workflowId": workflow, "title": "Chair"}))
        .send()
        .await
        .expect("answer");
    let (status, body) = json(r).await;
    assert_eq!(status, 200);
    assert_eq!(body["title"], "Chair");
    assert_eq!(s.env.count_bound("select count(*) from approvals where workflow_id = ?", &workflow).await, 1);

    // The same key with another body is a mistake, not a retry.
    let (status, problem) = json(
        s.api
            .request(Method::POST, "/approvals", &s.requester.token)
            .header("idempotency-key", "order-4711")
            .json(&json!({"workflowId": workflow, "title": "Sofa"}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    // Another caller's key of the same name is another request.
    let other = s.api.user(Role::Requester).await;
    let (status, theirs) = json(
        s.api
            .request(Method::POST, "/approvals", &other.token)
            .header("idempotency-key", "order-4711")
            .json(&json!({"workflowId": workflow, "title": "Chair"}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 202, "{theirs}");
    assert_ne!(theirs["eventId"], first["eventId"]);
    s.env.wait_processed(theirs["eventId"].as_str().expect("id")).await;
    assert_eq!(s.env.count_bound("select count(*) from approvals where workflow_id = ?", &workflow).await, 2);
}

#[tokio::test]
async fn a_refused_change_with_prefer_wait_answers_409_with_the_workers_reason() {
    let s = setup().await;
    let workflow = s.workflow().await;
    let r = s
        .api
        .request(Method::PATCH, &format!("/workflows/{workflow}"), &s.admin.token)
        .header("prefer", "wait=10")
        .json(&json!({"status": "DRAFT"}))
        .send()
        .await
        .expect("answer");
    let (status, problem) = json(r).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "invalid_transition");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("ACTIVE"));
    let r = s
        .api
        .request(Method::PATCH, &format!("/workflows/{workflow}"), &s.admin.token)
        .header("prefer", "wait=10")
        .json(&json!({"status": "PAUSED", "expectedVersion": 9}))
        .send()
        .await
        .expect("answer");
    let (status, problem) = json(r).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("version_conflict")));
}

#[tokio::test]
async fn without_prefer_wait_a_write_answers_202_and_its_status_url_follows_the_event() {
    let s = setup().await;
    let r = s
        .api
        .request(Method::POST, "/workflows", &s.admin.token)
        .json(&json!({"name": "Travel"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 202);
    let location = r.headers().get("location").and_then(|v| v.to_str().ok()).expect("location").to_string();
    let (_, accepted) = json(r).await;
    assert_eq!(accepted["status"], "accepted");
    assert_eq!(accepted["statusUrl"], location);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) =
            json(s.api.request(Method::GET, &location, &s.admin.token).send().await.expect("answer")).await;
        assert_eq!(status, 200);
        if body["status"] == "processed" {
            assert_eq!(body["type"], "workflow.created");
            assert_eq!(body["entity"], "workflow");
            break;
        }
        assert_eq!(body["status"], "pending");
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another user does not see it.
    let (status, _) =
        json(s.api.request(Method::GET, &location, &s.requester.token).send().await.expect("answer")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn validation_problems_name_the_field_and_nothing_can_be_mass_assigned() {
    let s = setup().await;
    let workflow = s.workflow().await;
    let post = |body: Value| s.api.request(Method::POST, "/approvals", &s.requester.token).json(&body).send();
    let cases = [
        (json!({"workflowId": workflow, "title": "x", "status": "APPROVED"}), "status"),
        (json!({"workflowId": workflow, "title": "x", "requesterId": s.approver.id}), "requesterId"),
        (json!({"workflowId": workflow, "title": "x", "amount": -5}), "amount"),
        (json!({"workflowId": workflow, "title": "x", "currency": "euro"}), "currency"),
        (json!({"workflowId": workflow, "title": ""}), "title"),
        (json!({"workflowId": "nope", "title": "x"}), "workflowId"),
        (json!({"workflowId": uuid::Uuid::new_v4(), "title": "x"}), "workflowId"),
        (json!({"title": "x"}), ""),
    ];
    for (body, field) in cases {
        let (status, problem) = json(post(body.clone()).await.expect("answer")).await;
        assert_eq!(status, 422, "{body} → {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{body} → {problem}");
        assert_eq!(problem["status"], 422);
    }
    let r = s
        .api
        .request(Method::POST, "/approvals", &s.requester.token)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"));
    let r = s
        .api
        .request(Method::POST, "/approvals", &s.requester.token)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 415);
    let (status, problem) =
        json(s.api.request(Method::GET, "/approvals?status=MAYBE", &s.requester.token).send().await.expect("answer"))
            .await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (422, Some("status")));
    assert_eq!(s.env.count("select count(*) from approvals").await, 0, "nothing invalid reached the worker");
}

#[tokio::test]
async fn lists_are_json_arrays_paged_by_a_link_header() {
    let s = setup().await;
    for _ in 0..3 {
        s.workflow().await;
    }
    let r =
        s.api.request(Method::GET, "/workflows?limit=2&status=ACTIVE", &s.admin.token).send().await.expect("answer");
    let link = r.headers().get("link").and_then(|v| v.to_str().ok()).expect("a next link").to_string();
    let (_, first) = json(r).await;
    assert_eq!(first.as_array().map(Vec::len), Some(2));
    assert!(link.ends_with("rel=\"next\""), "{link}");
    let next = link.trim_start_matches('<').split('>').next().expect("url");
    assert!(next.contains("status=ACTIVE"), "filters are kept: {next}");
    let r = s.api.request(Method::GET, next, &s.admin.token).send().await.expect("answer");
    assert!(r.headers().get("link").is_none());
    let (_, second) = json(r).await;
    assert_eq!(second.as_array().map(Vec::len), Some(1));
    assert_ne!(first[0]["id"], second[0]["id"]);
}

#[tokio::test]
async fn services_publish_cloud_events_over_http_one_or_many() {
    let s = setup().await;
    let service = s.api.user(Role::Service).await;
    let event = |title: &str| {
        json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "source": "/billing", "type": "audit.recorded",
               "data": {"entity": "invoice", "entityId": title, "action": "exported"}})
    };
    let (status, accepted) = json(
        s.api
            .request(Method::POST, "/api/v1/events", &service.token)
            .json(&json!([event("a"), event("b")]))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted.as_array().map(Vec::len), Some(2));
    for a in accepted.as_array().expect("array") {
        s.env.wait_processed(a["eventId"].as_str().expect("id")).await;
    }
    let actor: String =
        sqlx::query_scalar("select actor_id from audit_log where entity = 'invoice' and entity_id = 'a'")
            .fetch_one(&s.env.pool)
            .await
            .expect("row");
    assert_eq!(actor, service.id, "the actor is the caller, whatever the event says");
    let mut bad = event("c");
    bad["data"]["entityId"] = json!("");
    let (status, problem) = json(
        s.api
            .request(Method::POST, "/api/v1/events", &service.token)
            .json(&json!([event("d"), bad]))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["field"], "[1].data.entityId");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.env.count("select count(*) from audit_log where entity = 'invoice' and entity_id = 'd'").await,
        0,
        "a bad batch publishes nothing"
    );
    let (status, _) = json(
        s.api
            .request(Method::POST, "/api/v1/events", &s.requester.token)
            .json(&event("e"))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 403, "requesters may not publish raw events");
}

#[tokio::test]
async fn the_event_door_asks_what_the_dedicated_routes_ask() {
    let s = setup().await;
    let service = s.api.user(Role::Service).await;
    let workflow = s.workflow().await;
    let approval = s.approval(&workflow).await;
    let approval_id = approval["id"].as_str().expect("id").to_string();
    let cloud_event = |event_type: &str, data: Value| {
        json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "source": "/billing",
               "type": event_type, "data": data})
    };
    let post = |token: &str, body: Value| s.api.request(Method::POST, "/api/v1/events", token).json(&body).send();
    // A service may not PATCH /approvals/{id}, so it may not send the decision as an event either;
    // nor a rule that would approve everything, nor a workflow.
    let forbidden = [
        cloud_event("approval.decided", json!({"approvalId": approval_id, "status": "APPROVED"})),
        cloud_event(
            "rule.upserted",
            json!({"name": "approve all", "on": "approval.requested", "when": "true",
                   "then": [{"type": "approval.decide", "status": "APPROVED"}]}),
        ),
        cloud_event("workflow.created", json!({"name": "mine now"})),
    ];
    for event in &forbidden {
        let (status, problem) = json(post(&service.token, event.clone()).await.expect("answer")).await;
        assert_eq!(status, 403, "{} from a service: {problem}", event["type"]);
        assert!(problem["detail"].as_str().unwrap_or("").contains(event["type"].as_str().unwrap_or("?")), "{problem}");
    }
    // One forbidden event in a batch: nothing of the batch is published.
    let note = cloud_event("audit.recorded", json!({"entity": "invoice", "entityId": "batch", "action": "x"}));
    let (status, _) = json(post(&service.token, json!([note, forbidden[0].clone()])).await.expect("answer")).await;
    assert_eq!(status, 403);
    // What only the system sends is refused to everyone, admins included, naming the field.
    let escalate =
        cloud_event("approval.escalate", json!({"approvalId": approval_id, "toRole": "admin", "reason": "r"}));
    let (status, problem) = json(post(&s.admin.token, escalate).await.expect("answer")).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "type");
    // An admin may send what an admin may do on the routes.
    let (status, accepted) = json(
        post(&s.admin.token, cloud_event("workflow.created", json!({"name": "by an admin"}))).await.expect("answer"),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    s.env.wait_processed(accepted["eventId"].as_str().expect("id")).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let status: String = sqlx::query_scalar("select status from approvals where id = ?")
        .bind(&approval_id)
        .fetch_one(&s.env.pool)
        .await
        .expect("approval");
    assert_eq!(status, "PENDING", "no decision reached the worker");
    assert_eq!(s.env.count("select count(*) from rules").await, 0);
    assert_eq!(s.env.count("select count(*) from workflows").await, 2, "the test's and the admin's");
    assert_eq!(s.env.count("select count(*) from audit_log where entity_id = 'batch'").await, 0);
}

#[tokio::test]
async fn an_event_published_first_under_the_id_a_request_would_get_squats_nothing() {
    let s = setup().await;
    let service = s.api.user(Role::Service).await;
    let workflow = s.workflow().await;
    // The id the API used to derive from the requester, the endpoint and the key.
    let key = "laptop-2026-12";
    let derived = uuid::Uuid::new_v5(
        &automation_shared::events::ID_NAMESPACE,
        format!("idempotency:{}:POST /approvals:{key}", s.requester.id).as_bytes(),
    )
    .to_string();
    let squat = json!({"specversion": "1.0", "id": derived, "source": "/billing", "type": "audit.recorded",
                       "data": {"entity": "invoice", "entityId": "squat", "action": "first"}});
    let (status, accepted) =
        json(s.api.request(Method::POST, "/api/v1/events", &service.token).json(&squat).send().await.expect("answer"))
            .await;
    assert_eq!(status, 202);
    // The event door scopes ids to the caller and the source: the squat is not even known by it.
    assert_ne!(accepted["eventId"], derived.as_str());
    s.env.wait_processed(accepted["eventId"].as_str().expect("id")).await;
    let (status, body) = json(
        s.api
            .request(Method::POST, "/approvals", &s.requester.token)
            .header("idempotency-key", key)
            .header("prefer", "wait=10")
            .json(&json!({"workflowId": workflow, "title": "Laptop"}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200, "the requester's approval exists: {body}");
    assert_eq!(body["title"], "Laptop");
}

//! Poison mixed among good messages: the dead-letter store holds exactly the poison, every good
//! message is applied once, and the worker never stops.

use std::time::Duration;

use automation_shared::testing::TestEnv;
use lapin::BasicProperties;
#[cfg(feature = "fault-injection")]
use serde_json::json;

use crate::support::{Tally, WorkerProcess, publish_load, wait_applied};

#[tokio::test]
async fn poison_among_good_messages_ends_in_the_store_and_nothing_else_does() {
    let env = TestEnv::new().await;
    let worker = WorkerProcess::start(&env.config, &[]);
    worker.wait_ready().await;
    let json_props = || BasicProperties::default().with_content_type("application/json".into());
    let mut poison = 0;
    let mut confirmed = 0;
    for round in 0..5 {
        confirmed += publish_load(&env, round * 400..(round + 1) * 400).await;
        match round {
            0 => env.publish("audit.recorded", json_props(), b"{\"entity\": oops").await,
            1 => env.publish("audit.shredded", json_props(), br#"{"entity":"x","entityId":"1","action":"y"}"#).await,
            2 => env.publish("audit.recorded", json_props(), br#"{"entity":"","entityId":"1","action":"y"}"#).await,
            3 => env.publish("audit.recorded", json_props(), &vec![b' '; 5 * 1024 * 1024]).await,
            _ => {
                #[cfg(feature = "fault-injection")]
                {
                    let panic =
                        json!({"entity": "x", "entityId": "boom", "action": automation_worker::faults::PANIC_ACTION});
                    env.publish("audit.recorded", json_props(), panic.to_string().as_bytes()).await;
                }
                #[cfg(not(feature = "fault-injection"))]
                env.publish("audit.recorded", json_props(), br#"{"entity":"x","entityId":"1"}"#).await;
            }
        }
        poison += 1;
    }
    let sent = 2000;
    assert_eq!(wait_applied(&env, confirmed, Duration::from_secs(120)).await, confirmed, "{}", worker.log_tail());
    let stored = env.wait_count("select count(*) from dead_letters", poison, Duration::from_secs(60)).await;
    let kinds: Vec<(String, String)> =
        sqlx::query_as("select error_kind, substring_index(reason, ':', 1) from dead_letters order by seq")
            .fetch_all(&env.pool)
            .await
            .expect("rows");
    let tally = Tally::measure(&env, "poison mixed among good messages", sent + poison as usize, confirmed)
        .await
        .note(format!("poison-sent={poison} stored={kinds:?}"));
    assert_eq!(stored, poison, "exactly the poison is stored: {tally}");
    assert_eq!(worker.readiness().await, 200, "the worker kept going");
    tally.check();
}

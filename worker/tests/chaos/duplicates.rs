//! The same events from two publishers to two workers: applied once.

use std::time::Duration;

use automation_shared::messaging::{self, Publisher};
use automation_shared::testing::TestEnv;

use crate::support::{Tally, WorkerProcess, load_event, wait_applied};

#[tokio::test]
async fn duplicates_from_two_publishers_to_two_workers_are_applied_once() {
    let env = TestEnv::new().await;
    let first = WorkerProcess::start(
        &env.config,
        &[("AUTOMATION_WORKER__BATCH_SIZE", "20"), ("AUTOMATION_WORKER__PREFETCH", "40")],
    );
    let second = WorkerProcess::start(
        &env.config,
        &[("AUTOMATION_WORKER__BATCH_SIZE", "20"), ("AUTOMATION_WORKER__PREFETCH", "40")],
    );
    first.wait_ready().await;
    second.wait_ready().await;
    let sent = 3000;
    let publish = |offset: usize| {
        let env = &env;
        async move {
            let connection = std::sync::Arc::new(
                messaging::connect(&automation_shared::testing::addresses(&env.config.amqp.url), "chaos-publisher")
                    .await
                    .expect("connect"),
            );
            let publisher = Publisher::new(connection, Duration::from_secs(10)).await.expect("publisher");
            let exchange = env.names().events();
            let mut confirmed = 0;
            // The two publishers walk the same events from different starting points.
            for n in 0..sent {
                let (id, body) = load_event((n + offset) % sent);
                let outgoing = messaging::Outgoing {
                    exchange: &exchange,
                    routing_key: "audit.recorded",
                    body: &body,
                    properties: messaging::cloud_event_properties(&id, "audit.recorded"),
                    mandatory: false,
                };
                if publisher.publish(outgoing).await.is_ok() {
                    confirmed += 1;
                }
            }
            confirmed
        }
    };
    let (a, b) = tokio::join!(publish(0), publish(sent / 2));
    assert_eq!((a, b), (sent, sent));
    assert_eq!(wait_applied(&env, sent, Duration::from_secs(120)).await, sent);
    env.wait_count("select count(*) from inbox", sent as i64, Duration::from_secs(30)).await;
    // Let the last copies reach the workers and be skipped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tally = Tally::measure(&env, "2 publishers x 2 workers, every event twice", 2 * sent, sent)
        .await
        .note(format!("copies-published={}", a + b));
    assert_eq!(tally.dead_lettered, 0);
    tally.check();
}

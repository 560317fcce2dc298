//! `AUTOMATION_AMQP__QUORUM_INITIAL_GROUP_SIZE` on a deployment that exists: RabbitMQ 3.10 reads
//! `x-quorum-initial-group-size` only when it creates a queue but refuses a redeclaration with
//! another value (PRECONDITION_FAILED). Setting, changing and unsetting it must not stop the
//! topology from being declared, and a real difference in another argument must still be refused.

use std::process::{Command, Stdio};

use automation_shared::messaging::topology::{self, TopologySettings};
use automation_shared::testing::TestEnv;

/// The arguments `rabbitmqctl` shows for `queue`.
fn arguments_of(queue: &str) -> String {
    let output = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "arguments"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{queue}\t")).map(str::to_string))
        .unwrap_or_else(|| panic!("{queue} is not on the broker"))
}

#[tokio::test]
async fn setting_changing_and_unsetting_the_group_size_keeps_the_topology_declarable() {
    let env = TestEnv::new().await;
    let names = env.names();
    let commands = names.work_queue(automation_shared::events::WorkQueue::Commands);
    let sized = |size: Option<u16>| TopologySettings {
        quorum_initial_group_size: size,
        ..TopologySettings::of(&env.config.worker)
    };
    assert!(!arguments_of(&commands).contains("x-quorum-initial-group-size"), "created without it");

    // An upgrade that sets it: the queues from before keep working.
    topology::declare(&env.connection, &names, &sized(Some(3))).await.expect("set on existing queues");
    assert!(!arguments_of(&commands).contains("x-quorum-initial-group-size"), "only creation takes it");

    // Queues created with it, then the value changed, then unset.
    topology::delete(&env.connection, &names, &TopologySettings::of(&env.config.worker)).await.expect("deleted");
    topology::declare(&env.connection, &names, &sized(Some(3))).await.expect("created with it");
    let created = arguments_of(&commands);
    assert!(created.contains("x-quorum-initial-group-size") && created.contains('3'), "{created}");
    topology::declare(&env.connection, &names, &sized(Some(5))).await.expect("another size");
    topology::declare(&env.connection, &names, &sized(None)).await.expect("unset");
    assert_eq!(arguments_of(&commands), created, "the queue is left as it was created");

    // Any other difference is still the broker's refusal, as before.
    let mut other = env.config.worker.clone();
    other.delivery_limit += 1;
    let refused = topology::declare(&env.connection, &names, &TopologySettings::of(&other))
        .await
        .expect_err("another delivery limit is refused");
    assert!(refused.to_string().contains("x-delivery-limit"), "{refused}");
}

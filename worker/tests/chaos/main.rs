//! The fault suite (`make chaos`): the worker killed, crashed, stopped and cut off from its
//! dependencies under load, against the real RabbitMQ and MariaDB (private instances where a
//! service is stopped). Each scenario prints a tally and passes only with nothing lost, nothing
//! applied twice and, where it measures order, nothing applied out of order.

#![expect(clippy::expect_used, reason = "test support: a failed set-up stops the test with its message")]

mod drain;
mod duplicates;
mod kills;
mod ordering;
mod outages;
mod poison;
#[path = "../worker/runs.rs"]
mod runs;
mod support;
mod tasks;

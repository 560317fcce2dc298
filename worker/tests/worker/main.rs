//! Integration tests of the worker against the real RabbitMQ and MariaDB.

#![expect(clippy::expect_used, reason = "test support: a failed set-up stops the test with its message")]

mod audit;
mod automations;
mod cluster_addresses;
mod concurrency;
mod dlq;
mod dr;
mod generated_classes;
mod healthcheck;
mod insights;
mod lost_commits;
mod ordering;
mod pipeline;
mod poison;
mod quorum_group_size;
mod rejections;
mod replies;
mod retries;
mod rules;
mod runs;
mod starting;
mod support;
mod trust;

//! Integration tests of the API with the real RabbitMQ, MariaDB and worker.

#![expect(clippy::expect_used, reason = "test support: a failed set-up stops the test with its message")]

mod access_log;
mod auth;
mod cloudevents_sdk;
mod cluster_addresses;
mod dead_letters;
mod flows;
mod healthcheck;
mod http;
mod jwt;
mod outages;
mod revocations;
mod rules_and_automation;
mod support;
mod traces;
mod trust_boundaries;
mod waiting;

//! What the API and the worker share: configuration, the events and their envelope, the state
//! machines, RabbitMQ messaging and topology, the database, rules, and telemetry.

pub mod access;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod events;
pub mod exit;
pub mod healthcheck;
pub mod lifecycle;
pub mod messaging;
pub mod meters;
pub mod rules;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod traces;

//! automation-worker: consumes events from RabbitMQ and applies each to MySQL exactly once, with
//! its audit record and its notification.
//!
//! The flow of one delivery: [`consumer`] takes it in a batch and reads its envelope; [`apply`]
//! runs its [`handlers`] in the batch transaction with the inbox, audit and outbox rows; the
//! consumer acks after the commit, or hands the message to [`failures`] (retry or dead-letter);
//! [`outbox`] publishes the notifications after the commit; [`dead_letter_store`] keeps every
//! dead letter in MySQL.
//!
//! [`service`] connects and hands each part the context it needs: a [`database::Database`], a
//! [`broker::Broker`], the [`consumer::ApplyContext`] every consumer of events applies with, the
//! [`runner::TaskRunner`] for automation runs, and the few pieces each of the others uses.

pub mod announce;
pub mod apply;
pub mod broker;
pub mod cli;
pub mod consumer;
pub mod database;
pub mod dead_letter_store;
pub mod deferrals;
pub mod entities;
pub mod failures;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod handlers;
pub mod health;
pub mod membership;
pub mod outbox;
pub mod pack;
pub mod partitions;
pub mod rules;
pub mod runner;
pub mod scheduler;
pub mod sequencer;
pub mod service;
pub mod spans;
pub mod tasks;

//! automation-api: authenticates callers, validates what they send, and publishes it as events
//! with publisher confirms; reads come from MySQL (CONTRACT §3).
//!
//! [`app`] builds the router and serves; [`auth`] says who is calling; [`routes`] holds one module
//! per resource; [`commands`] turns a validated request into a published event; [`waiters`] and
//! [`broker`] let a request wait for the worker without polling; [`access_log`] says what is
//! logged about the requests served.

pub mod access_log;
pub mod app;
pub mod auth;
pub mod broker;
pub mod commands;
pub mod extract;
pub mod openapi;
pub mod pagination;
pub mod problem;
pub mod request_spans;
pub mod routes;
pub mod waiters;

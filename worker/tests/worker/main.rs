//! Integration tests of the worker against the real RabbitMQ and MariaDB.

mod concurrency;
mod pipeline;
mod poison;
mod rejections;
mod support;

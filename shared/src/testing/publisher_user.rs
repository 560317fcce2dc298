//! An outside publisher's AMQP user on the shared broker, as production gives each publishing
//! service: its own credentials, write access to the test's events exchange only, and topic
//! permissions holding it to some routing keys. Removed when dropped, also when the test fails.

use std::process::{Command, Stdio};

const CTL: &str = "rabbitmqctl";

pub struct PublisherUser {
    pub name: String,
    /// `amqp://name:password@127.0.0.1:5672/%2f`
    pub url: String,
}

fn ctl(args: &[&str]) {
    let status = Command::new(CTL)
        .args(args)
        .arg("-q")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("rabbitmqctl runs: {e}"));
    assert!(status.success(), "rabbitmqctl {} failed", args.first().unwrap_or(&""));
}

impl PublisherUser {
    /// A user that may publish to `{prefix}.events` with routing keys matching `topics` (a
    /// regular expression, as RabbitMQ's topic permissions take it).
    pub fn create(prefix: &str, topics: &str) -> PublisherUser {
        let name = format!("{prefix}-publisher");
        let password = uuid::Uuid::new_v4().simple().to_string();
        ctl(&["add_user", &name, &password]);
        let user = PublisherUser { name: name.clone(), url: format!("amqp://{name}:{password}@127.0.0.1:5672/%2f") };
        let exchange = format!("^{}$", regex_escape(&format!("{prefix}.events")));
        ctl(&["set_permissions", "-p", "/", &name, "^$", &exchange, "^$"]);
        ctl(&["set_topic_permissions", "-p", "/", &name, &format!("{prefix}.events"), topics, "^$"]);
        user
    }
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_ascii_alphanumeric() { vec![c] } else { vec!['\\', c] }).collect()
}

impl Drop for PublisherUser {
    fn drop(&mut self) {
        let _ = Command::new(CTL)
            .args(["delete_user", &self.name, "-q"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

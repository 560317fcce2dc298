//! Who published a message, as the system establishes it and never as the message claims: the
//! system itself (the API and the worker), or an outside publisher.
//!
//! RabbitMQ validates the AMQP `user_id` property: a publisher can set it only to the user it
//! connected as. The system's own processes set it on everything they publish, so a message with
//! a system user in `user_id` came from a system connection. When the worker republishes an
//! outsider's message (a retry, a dead letter, a replay) it publishes it as itself but marks it
//! with [`ORIGIN_HEADER`], so the copy is still the outsider's; the mark counts only on a message
//! the system published, so an outsider cannot remove or forge it.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::header;
use crate::config::AmqpConfig;

/// Set by the system on its copy of an outsider's message: `external`.
pub const ORIGIN_HEADER: &str = "x-automation-origin";
/// With [`ORIGIN_HEADER`]: the outsider's broker-validated AMQP user, when it set `user_id`.
pub const PUBLISHER_HEADER: &str = "x-automation-publisher";

const EXTERNAL: &str = "external";

/// The AMQP users whose messages are the system's own: the user of `AMQP_URL`, and any in
/// `amqp.system_users` (the API's, when it connects with other credentials than the worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemUsers {
    own: String,
    others: Vec<String>,
}

impl SystemUsers {
    pub fn new(own: impl Into<String>, others: &[String]) -> SystemUsers {
        SystemUsers { own: own.into(), others: others.to_vec() }
    }

    /// The user of `amqp.url` (RabbitMQ's `guest` when the URL names none), and the configured
    /// others.
    pub fn of(config: &AmqpConfig) -> SystemUsers {
        let own =
            config.addresses().map(|addresses| addresses.user().to_string()).unwrap_or_else(|_| "guest".to_string());
        SystemUsers::new(own, &config.system_users)
    }

    /// The user this process publishes as.
    pub fn own(&self) -> &str {
        &self.own
    }

    pub fn contains(&self, user: &str) -> bool {
        self.own == user || self.others.iter().any(|o| o == user)
    }

    /// Did a system connection publish this copy (its validated `user_id` is one of ours)?
    /// Only then do headers of ours on it count, whoever first sent the message.
    pub fn published(&self, properties: &BasicProperties) -> bool {
        properties.user_id().as_ref().is_some_and(|u| self.contains(u.as_str()))
    }
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The system published it (the API for a caller it authenticated, or the worker).
    System,
    /// An outside publisher; `user` is its AMQP user when it set `user_id` (validated by the
    /// broker), else unknown.
    External { user: Option<String> },
}

impl Origin {
    /// Reads the origin of a message from what the broker vouches for.
    pub fn of(properties: &BasicProperties, system: &SystemUsers) -> Origin {
        let user = properties.user_id().as_ref().map(|u| u.as_str().to_string());
        match user {
            Some(user) if system.contains(&user) => {
                if header(properties, ORIGIN_HEADER).as_deref() == Some(EXTERNAL) {
                    Origin::External { user: header(properties, PUBLISHER_HEADER).filter(|u| !u.is_empty()) }
                } else {
                    Origin::System
                }
            }
            user => Origin::External { user },
        }
    }

    pub fn is_system(&self) -> bool {
        *self == Origin::System
    }

    /// The publisher as the audit trail and error messages name it.
    pub fn describe(&self) -> String {
        match self {
            Origin::System => "automation-engine".to_string(),
            Origin::External { user: Some(user) } => format!("AMQP user {user:?}"),
            Origin::External { user: None } => "a publisher that set no user_id".to_string(),
        }
    }

    /// The properties for publishing a message of this origin over a system connection: the
    /// system's `user_id` (an outsider's would make the broker close the channel), and an
    /// outsider's message marked as such, whatever marks it carried.
    pub fn stamp(&self, properties: BasicProperties, system: &SystemUsers) -> BasicProperties {
        // Headers of ours (`x-…`) count only on what the system published; an outsider's are
        // dropped, not carried into a copy that bears the system's user_id. `CC` and `BCC` would
        // make the broker route the copy to queues the outsider names: never carried.
        let ours = system.published(&properties);
        let mut headers = FieldTable::default();
        for (key, value) in properties.headers().as_ref().map(|h| h.inner().iter()).into_iter().flatten() {
            let name = key.as_str();
            let routing = name.eq_ignore_ascii_case("CC") || name.eq_ignore_ascii_case("BCC");
            let marks = name.eq_ignore_ascii_case(ORIGIN_HEADER) || name.eq_ignore_ascii_case(PUBLISHER_HEADER);
            let system_header = name.len() > 2 && name[..2].eq_ignore_ascii_case("x-") && !ours;
            if !routing && !marks && !system_header {
                headers.insert(key.clone(), value.clone());
            }
        }
        if let Origin::External { user } = self {
            let text = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
            headers.insert(ShortString::from(ORIGIN_HEADER), text(EXTERNAL));
            if let Some(user) = user {
                headers.insert(ShortString::from(PUBLISHER_HEADER), text(user));
            }
        }
        properties.with_headers(headers).with_user_id(ShortString::from(system.own().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system() -> SystemUsers {
        SystemUsers::new("automation", &["automation-api".to_string()])
    }

    #[test]
    fn only_a_system_user_id_is_the_system() {
        let none = BasicProperties::default();
        assert_eq!(Origin::of(&none, &system()), Origin::External { user: None });
        let orders = BasicProperties::default().with_user_id("orders".into());
        assert_eq!(Origin::of(&orders, &system()), Origin::External { user: Some("orders".into()) });
        for user in ["automation", "automation-api"] {
            let ours = BasicProperties::default().with_user_id(user.into());
            assert_eq!(Origin::of(&ours, &system()), Origin::System);
        }
    }

    #[test]
    fn an_outsiders_message_stays_the_outsiders_when_the_system_republishes_it() {
        for outsider in [Origin::External { user: Some("orders".into()) }, Origin::External { user: None }] {
            let copy = outsider.stamp(BasicProperties::default().with_user_id("orders".into()), &system());
            assert_eq!(copy.user_id().as_ref().map(|u| u.as_str()), Some("automation"));
            assert_eq!(Origin::of(&copy, &system()), outsider);
        }
        // Stamped again (a retry of a retry): still the outsider's.
        let outsider = Origin::External { user: Some("orders".into()) };
        let twice = outsider.stamp(outsider.stamp(BasicProperties::default(), &system()), &system());
        assert_eq!(Origin::of(&twice, &system()), outsider);
    }

    #[test]
    fn marks_an_outsider_sets_itself_mean_nothing() {
        // A forged "I am the system's copy of someone else's message" is still the forger's...
        let forged = set_marks(BasicProperties::default().with_user_id("orders".into()), "admin");
        assert_eq!(Origin::of(&forged, &system()), Origin::External { user: Some("orders".into()) });
        // ...and the system's copy of it does not take the forged publisher over.
        let outsider = Origin::of(&forged, &system());
        let copy = outsider.stamp(forged, &system());
        assert_eq!(Origin::of(&copy, &system()), Origin::External { user: Some("orders".into()) });
    }

    #[test]
    fn the_own_user_comes_from_the_url() {
        let of = |url: &str| SystemUsers::of(&AmqpConfig { url: url.into(), ..AmqpConfig::default() });
        assert_eq!(of("amqp://automation%2Dworker:secret@127.0.0.1:5672/%2f").own(), "automation-worker");
        assert_eq!(of("amqp://127.0.0.1:5672").own(), "guest");
    }

    fn set_marks(properties: BasicProperties, publisher: &str) -> BasicProperties {
        let properties = super::super::set_header(properties, ORIGIN_HEADER, EXTERNAL);
        super::super::set_header(properties, PUBLISHER_HEADER, publisher)
    }

    #[test]
    fn a_copy_carries_neither_the_outsiders_routing_headers_nor_its_claims_in_our_headers() {
        let mut headers = FieldTable::default();
        let text = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
        headers.insert("CC".into(), text("automation.dead-letters"));
        headers.insert("x-original-routing-key".into(), text("workflow.created"));
        headers.insert("x-dead-letter-id".into(), text("00000000-0000-0000-0000-000000000000"));
        headers.insert("traceparent".into(), text("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        let outsiders = BasicProperties::default().with_user_id("orders".into()).with_headers(headers);
        let origin = Origin::of(&outsiders, &system());
        let copy = origin.stamp(outsiders, &system());
        let kept: Vec<&str> =
            copy.headers().as_ref().map(|h| h.inner().keys().map(|k| k.as_str()).collect()).unwrap_or_default();
        assert!(kept.contains(&"traceparent"), "{kept:?}");
        for dropped in ["CC", "x-original-routing-key", "x-dead-letter-id"] {
            assert!(!kept.contains(&dropped), "{dropped} carried: {kept:?}");
        }
        // The system's own copy keeps its headers (a retry's attempt counter and history).
        let ours = set_marks(BasicProperties::default().with_user_id("automation".into()), "orders");
        let ours = super::super::set_header(ours, "x-attempt-history", "[]");
        let again = Origin::of(&ours, &system()).stamp(ours, &system());
        assert!(again.headers().as_ref().is_some_and(|h| h.inner().contains_key("x-attempt-history")));
    }
}

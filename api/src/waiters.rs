//! Requests waiting with `Prefer: wait` for the worker to finish an event. A waiter registers
//! before the event is published; the notification listener wakes it when a notification caused
//! by that event arrives. Nothing polls the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use tokio::sync::oneshot;

/// Waiting requests by event id, each with a token so a timed-out one can remove itself.
type Pending = HashMap<String, Vec<(u64, oneshot::Sender<Value>)>>;

#[derive(Debug, Default)]
pub struct Waiters {
    pending: Mutex<Pending>,
    next: AtomicU64,
}

/// One waiting request; dropping it unregisters it.
pub struct Waiter<'a> {
    waiters: &'a Waiters,
    event_id: String,
    token: u64,
    receiver: oneshot::Receiver<Value>,
}

impl Waiters {
    pub fn register(&self, event_id: &str) -> Waiter<'_> {
        let (sender, receiver) = oneshot::channel();
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(event_id.to_string()).or_default().push((token, sender));
        Waiter { waiters: self, event_id: event_id.to_string(), token, receiver }
    }

    /// Hands a notification to whoever waits for its cause.
    pub fn deliver(&self, notification: Value) {
        let Some(cause) = notification.get("causationid").and_then(Value::as_str) else {
            return;
        };
        let Some(waiting) = self.lock().remove(cause) else {
            return;
        };
        for (_, sender) in waiting {
            let _ = sender.send(notification.clone());
        }
    }

    /// Whether any request waits (registered before its event was published).
    pub fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Waiter<'_> {
    /// The notification, or `None` when `timeout` passes first.
    pub async fn wait(mut self, timeout: std::time::Duration) -> Option<Value> {
        tokio::time::timeout(timeout, &mut self.receiver).await.ok().and_then(Result::ok)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut pending = self.waiters.lock();
        if let Some(list) = pending.get_mut(&self.event_id) {
            list.retain(|(token, _)| *token != self.token);
            if list.is_empty() {
                pending.remove(&self.event_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[tokio::test]
    async fn a_notification_wakes_every_waiter_of_its_cause_and_no_other() {
        let waiters = Waiters::default();
        let first = waiters.register("e1");
        let second = waiters.register("e1");
        let other = waiters.register("e2");
        waiters.deliver(json!({"causationid": "e1", "type": "approval.approved"}));
        assert_eq!(
            first.wait(Duration::from_millis(50)).await.map(|n| n["type"].clone()),
            Some(json!("approval.approved"))
        );
        assert!(second.wait(Duration::from_millis(50)).await.is_some());
        assert!(other.wait(Duration::from_millis(20)).await.is_none());
        assert_eq!(waiters.len(), 0, "timed-out and woken waiters are gone");
    }
}

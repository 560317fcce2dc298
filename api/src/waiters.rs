//! Requests waiting with `Prefer: wait` for the worker to finish an event. A waiter registers
//! before the event is published; the notification listener wakes it when a notification caused
//! by that event arrives. Nothing polls the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use automation_shared::events::Notification;
use tokio::sync::oneshot;

/// Waiting requests by event id, each with a token so a timed-out one can remove itself.
type Pending = HashMap<String, Vec<(u64, oneshot::Sender<Notification>)>>;

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
    receiver: oneshot::Receiver<Notification>,
}

impl Waiters {
    pub fn register(&self, event_id: &str) -> Waiter<'_> {
        let (sender, receiver) = oneshot::channel();
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(event_id.to_string()).or_default().push((token, sender));
        Waiter { waiters: self, event_id: event_id.to_string(), token, receiver }
    }

    /// Hands a notification to whoever waits for its cause.
    pub fn deliver(&self, notification: Notification) {
        let Some(cause) = notification.causation_id.as_deref() else {
            return;
        };
        let Some(waiting) = self.lock().remove(cause) else {
            return;
        };
        for (_, sender) in waiting {
            let _ = sender.send(notification.clone());
        }
    }

    /// Whether a request waits for the event `cause`.
    pub fn waits_for(&self, cause: &str) -> bool {
        self.lock().contains_key(cause)
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
    pub async fn wait(mut self, timeout: std::time::Duration) -> Option<Notification> {
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
    use automation_shared::events::NotificationType;
    use serde_json::json;
    use std::time::Duration;

    fn notification(value: serde_json::Value) -> Notification {
        serde_json::from_value(value).expect("a notification")
    }

    #[tokio::test]
    async fn a_notification_wakes_every_waiter_of_its_cause_and_no_other() {
        let waiters = Waiters::default();
        let first = waiters.register("e1");
        let second = waiters.register("e1");
        let other = waiters.register("e2");
        waiters.deliver(notification(json!({"causationid": "e1", "type": "approval.approved"})));
        assert_eq!(
            first.wait(Duration::from_millis(50)).await.and_then(|n| n.kind),
            Some(NotificationType::ApprovalApproved)
        );
        assert!(second.wait(Duration::from_millis(50)).await.is_some());
        assert!(other.wait(Duration::from_millis(20)).await.is_none());
        assert_eq!(waiters.len(), 0, "timed-out and woken waiters are gone");
    }
}

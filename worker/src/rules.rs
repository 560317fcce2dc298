//! Rules in the batch: the enabled rules (reloaded when the table changes), evaluated after each
//! applied event whose type matches. Each matching rule's actions become follow-up events in the
//! outbox of the same transaction, so they are audited, idempotent and retried like any other; a
//! chain of them is refused past depth 8 where it is applied.

use automation_shared::db::audit::ActorType;
use automation_shared::db::events::OutboxMessage;
use automation_shared::db::rules as rule_rows;
use automation_shared::events::{Envelope, NotificationType, RuleFired, derived_id};
use automation_shared::rules::engine::{self, ConditionCache, Evaluation, StoredRule};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::MySqlConnection;
use uuid::Uuid;

use crate::announce::{self, Actor, Cause};
use crate::handlers::Applied;

/// What the rules table looked like when the rules were loaded.
type Fingerprint = (Option<DateTime<Utc>>, i64, i64);

/// The enabled rules and their compiled conditions, per consumer.
#[derive(Debug)]
pub struct RuleSet {
    fingerprint: Option<Fingerprint>,
    rules: Vec<StoredRule>,
    conditions: ConditionCache,
    /// The budget of one evaluation (`AUTOMATION_RULES__MAX_STEPS`).
    max_steps: u64,
}

/// Events with a collection longer than this are evaluated while the runtime moves the thread's
/// other tasks elsewhere (on a multi-threaded runtime): comprehensions over them, within the
/// budget, may take milliseconds.
const BLOCKING_COLLECTION: usize = 1_000;

/// What the rules made of one applied event.
#[derive(Debug, Default)]
pub struct Fired {
    /// Every evaluation, kept with the event and shown in its status.
    pub evaluations: Vec<Evaluation>,
    /// Follow-up events and `rule.fired` notifications.
    pub outbox: Vec<OutboxMessage>,
    /// The rules that matched, for their audit records.
    pub matched: Vec<(Uuid, Value)>,
}

impl RuleSet {
    pub fn new(max_steps: u64) -> RuleSet {
        RuleSet { fingerprint: None, rules: Vec::new(), conditions: ConditionCache::default(), max_steps }
    }

    /// Reloads the rules if they changed since the last batch (one cheap query per batch, so a
    /// rule applies to every event processed after its change committed).
    pub async fn refresh(&mut self, conn: &mut MySqlConnection) -> sqlx::Result<()> {
        let fingerprint = rule_rows::fingerprint(&mut *conn).await?;
        if self.fingerprint != Some(fingerprint) {
            self.rules = rule_rows::enabled(&mut *conn).await?;
            self.fingerprint = Some(fingerprint);
        }
        Ok(())
    }

    pub fn evaluate(&self, envelope: &Envelope, applied: &Applied) -> Fired {
        let mut fired = Fired::default();
        if !self
            .rules
            .iter()
            .any(|r| automation_shared::rules::pattern_matches(&r.definition.on, envelope.event_type.as_str()))
        {
            return fired;
        }
        let event = serde_json::to_value(envelope.to_cloud_event()).unwrap_or(Value::Null);
        let evaluate = || {
            engine::evaluate(
                &self.conditions,
                &self.rules,
                envelope.event_type.as_str(),
                &event,
                &applied.state,
                self.max_steps,
            )
        };
        // A costly evaluation (large lists under comprehensions, within the budget) runs while
        // the runtime moves this thread's other tasks elsewhere.
        let costly = engine::longest_input(&event, &applied.state) > BLOCKING_COLLECTION;
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let (mut evaluations, actions) =
            if costly && multi_threaded { tokio::task::block_in_place(evaluate) } else { evaluate() };
        let cause = Cause::from(envelope);
        let mut index_in_rule: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
        let mut described: std::collections::HashMap<Uuid, Vec<String>> = std::collections::HashMap::new();
        for (rule_id, action) in actions {
            let index = index_in_rule.entry(rule_id).or_default();
            let description =
                match automation_shared::rules::plan(&action, &applied.entity, &applied.entity_id, &applied.state) {
                    Ok((event_type, data)) => {
                        let id = derived_id(&format!("rule:{rule_id}:{index}"), &envelope.scoped_id()).to_string();
                        let actor = Actor {
                            id: rule_id.to_string(),
                            actor_type: ActorType::Rule,
                            source: "/automation-engine/rules",
                        };
                        fired.outbox.push(announce::follow_up(&cause, &id, event_type, data, &actor));
                        format!("{} → {event_type} {id}", action.kind())
                    }
                    Err(why) => format!("{} skipped: {why}", action.kind()),
                };
            *index += 1;
            described.entry(rule_id).or_default().push(description);
        }
        for evaluation in evaluations.iter_mut().filter(|e| e.matched) {
            evaluation.actions = described.remove(&evaluation.rule_id).unwrap_or_default();
            let data = serde_json::to_value(RuleFired {
                rule_id: evaluation.rule_id,
                rule_name: evaluation.rule_name.clone(),
                version: evaluation.version,
                event_id: envelope.id.clone(),
                event_type: envelope.event_type.as_str().to_string(),
                actions: evaluation.actions.clone(),
            })
            .unwrap_or_default();
            let id = derived_id(&format!("rule-fired:{}", evaluation.rule_id), &envelope.scoped_id());
            fired.outbox.push(announce::notification_with_id(id, &cause, NotificationType::RuleFired, data.clone()));
            fired.matched.push((evaluation.rule_id, data));
        }
        fired.evaluations = evaluations;
        fired
    }
}

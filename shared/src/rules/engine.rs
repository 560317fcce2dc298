//! Compiling and evaluating rule conditions (CEL), with bounded cost and a trace of each
//! evaluation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Program, Value as CelValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{MAX_COMPREHENSION_DEPTH, MAX_CONDITION_CHARS, RuleAction, RuleDefinition, pattern_matches};

/// The variables a condition may read.
pub const VARIABLES: [&str; 2] = ["event", "entity"];

/// How much work one evaluation may do by default (`AUTOMATION_RULES__MAX_STEPS`), in steps: the
/// iterations of its comprehensions (nested ones multiply) times the size of the condition, a
/// `matches` counting 100 (it compiles a regular expression). 2,000,000 steps take about 50 ms
/// in a release build; an event of the largest size a publisher may send cannot make one rule
/// take longer than that.
pub const DEFAULT_MAX_STEPS: u64 = 2_000_000;

/// A compiled condition.
#[derive(Debug)]
pub struct Condition {
    program: Program,
    /// How deep its comprehensions nest.
    depth: u32,
    /// What one pass over the condition costs, in steps.
    weight: u64,
    /// The longest list written in the condition itself.
    longest_literal: usize,
}

/// Compiles `source`, refusing what would make evaluation unbounded or always fail.
pub fn compile(source: &str) -> Result<Condition, String> {
    if source.chars().count() > MAX_CONDITION_CHARS {
        return Err(format!("the condition is longer than {MAX_CONDITION_CHARS} characters"));
    }
    if source.trim().is_empty() {
        return Err("the condition is empty".into());
    }
    let program = Program::compile(source).map_err(|e| e.to_string().trim().replace('\n', " "))?;
    let depth = comprehension_depth(program.expression());
    if depth > MAX_COMPREHENSION_DEPTH {
        return Err(format!(
            "comprehensions (all, exists, map, filter) are nested {depth} deep; at most {MAX_COMPREHENSION_DEPTH} are allowed"
        ));
    }
    let references = program.references();
    let bound = comprehension_variables(program.expression());
    for variable in references.variables() {
        if !VARIABLES.contains(&variable) && !bound.iter().any(|b| b == variable) {
            return Err(format!("unknown variable `{variable}`: a condition reads `event` and `entity`"));
        }
    }
    let condition = Condition {
        depth: depth as u32,
        weight: weight(program.expression()),
        longest_literal: longest_literal(program.expression()),
        program,
    };
    // What the condition alone costs is known now: refuse it at save time.
    let alone = condition.estimate(0);
    if alone > DEFAULT_MAX_STEPS {
        return Err(format!(
            "the condition would take {alone} steps on any event, over the budget of {DEFAULT_MAX_STEPS}: iterate over less"
        ));
    }
    Ok(condition)
}

/// What one pass over the expression costs: a step per node, 100 per `matches`.
fn weight(expr: &IdedExpr) -> u64 {
    let own = match &expr.expr {
        Expr::Call(call) if call.func_name == "matches" => 100,
        _ => 1,
    };
    children(expr).into_iter().map(weight).fold(own, u64::saturating_add)
}

fn longest_literal(expr: &IdedExpr) -> usize {
    let own = match &expr.expr {
        Expr::List(list) => list.elements.len(),
        Expr::Map(map) => map.entries.len(),
        _ => 0,
    };
    children(expr).into_iter().map(longest_literal).fold(own, usize::max)
}

/// The most elements of any list or map in `value`, at any depth: what a comprehension over it
/// can iterate.
/// The most elements of any list or map in the event or the entity.
pub fn longest_input(event: &Value, entity: &Value) -> usize {
    longest_collection(event).max(longest_collection(entity))
}

fn longest_collection(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(longest_collection).fold(items.len(), usize::max),
        Value::Object(map) => map.values().map(longest_collection).fold(map.len(), usize::max),
        _ => 0,
    }
}

impl Condition {
    /// The steps an evaluation can take at most on inputs whose longest collection is
    /// `longest_input` long ([`longest_input`]): every comprehension iterating the longest
    /// collection there is, nested ones multiplying.
    pub fn estimate(&self, longest_input: usize) -> u64 {
        let longest = longest_input.max(self.longest_literal) as u64;
        longest.saturating_add(1).saturating_pow(self.depth).saturating_mul(self.weight)
    }

    /// Evaluates unless the estimate is over `max_steps`, which fails as "over budget" at once
    /// and costs nothing.
    pub fn evaluate_within(&self, event: &Value, entity: &Value, max_steps: u64) -> Result<bool, String> {
        self.evaluate_measured(event, entity, longest_input(event, entity), max_steps)
    }

    /// [`Condition::evaluate_within`] with the inputs measured once for every rule.
    fn evaluate_measured(&self, event: &Value, entity: &Value, longest: usize, max_steps: u64) -> Result<bool, String> {
        let estimate = self.estimate(longest);
        if estimate > max_steps {
            return Err(format!(
                "over budget: it could take {estimate} steps on this event, more than the {max_steps} allowed (AUTOMATION_RULES__MAX_STEPS)"
            ));
        }
        self.evaluate(event, entity)
    }

    /// Evaluates against `event` (the CloudEvent with its `data`) and `entity` (the state after
    /// the event was applied). A condition that does not yield a bool is an error.
    pub fn evaluate(&self, event: &Value, entity: &Value) -> Result<bool, String> {
        let mut context = Context::default();
        context.add_variable("event", event).map_err(|e| e.to_string())?;
        context.add_variable("entity", entity).map_err(|e| e.to_string())?;
        match self.program.execute(&context) {
            Ok(CelValue::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("the condition yielded {} instead of a bool", type_name(&other))),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn type_name(value: &CelValue) -> &'static str {
    match value {
        CelValue::Null => "null",
        CelValue::Int(_) | CelValue::UInt(_) => "a number",
        CelValue::Float(_) => "a number",
        CelValue::String(_) => "a string",
        CelValue::List(_) => "a list",
        CelValue::Map(_) => "a map",
        _ => "a non-bool value",
    }
}

fn children(expr: &IdedExpr) -> Vec<&IdedExpr> {
    match &expr.expr {
        Expr::Call(call) => call.target.iter().map(|t| t.as_ref()).chain(call.args.iter()).collect(),
        Expr::Comprehension(c) => {
            vec![&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
        }
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => map
            .entries
            .iter()
            .flat_map(|e| match &e.expr {
                EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter()
            .flat_map(|e| match &e.expr {
                EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Select(select) => vec![select.operand.as_ref()],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => vec![],
    }
}

fn comprehension_depth(expr: &IdedExpr) -> usize {
    let below = children(expr).into_iter().map(comprehension_depth).max().unwrap_or(0);
    match expr.expr {
        Expr::Comprehension(_) => below + 1,
        _ => below,
    }
}

fn comprehension_variables(expr: &IdedExpr) -> Vec<String> {
    let mut names = Vec::new();
    if let Expr::Comprehension(c) = &expr.expr {
        names.push(c.iter_var.clone());
        names.extend(c.iter_var2.clone());
        names.push(c.accu_var.clone());
    }
    for child in children(expr) {
        names.extend(comprehension_variables(child));
    }
    names
}

/// A stored rule with its version, as the engine sees it.
#[derive(Debug, Clone)]
pub struct StoredRule {
    pub id: Uuid,
    pub version: u32,
    pub definition: RuleDefinition,
}

/// One rule's evaluation, kept with the event and shown in its status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    pub rule_id: Uuid,
    pub rule_name: String,
    pub version: u32,
    pub matched: bool,
    /// Why it matched or not, in words.
    pub reason: String,
    /// The action types it triggered (empty unless matched).
    #[serde(default)]
    pub actions: Vec<String>,
}

/// Compiled conditions per (rule, version), bounded in size.
#[derive(Debug, Default)]
pub struct ConditionCache {
    programs: Mutex<HashMap<(Uuid, u32), Arc<Condition>>>,
}

/// More distinct (rule, version) pairs than this and the cache starts over: old versions are
/// never asked for again, and a full recompile of live rules is cheap.
const CACHE_CAPACITY: usize = 4096;

impl ConditionCache {
    pub fn get(&self, rule: &StoredRule) -> Result<Arc<Condition>, String> {
        let key = (rule.id, rule.version);
        if let Some(found) = self.lock().get(&key) {
            return Ok(found.clone());
        }
        let compiled = Arc::new(compile(&rule.definition.when)?);
        let mut programs = self.lock();
        if programs.len() >= CACHE_CAPACITY {
            programs.clear();
        }
        programs.insert(key, compiled.clone());
        Ok(compiled)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, u32), Arc<Condition>>> {
        // A panic while holding the lock leaves only a half-filled map behind: keep using it.
        self.programs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Evaluates `rules` (any order; sorted here) for one applied event. Returns every evaluation
/// and the actions of the rules that matched, in order.
pub fn evaluate(
    cache: &ConditionCache,
    rules: &[StoredRule],
    event_type: &str,
    event: &Value,
    entity: &Value,
    max_steps: u64,
) -> (Vec<Evaluation>, Vec<(Uuid, RuleAction)>) {
    let mut candidates: Vec<&StoredRule> =
        rules.iter().filter(|r| r.definition.enabled && pattern_matches(&r.definition.on, event_type)).collect();
    candidates.sort_by_key(|r| (r.definition.priority, r.id));
    let mut evaluations = Vec::new();
    let mut actions = Vec::new();
    // Measured once: every candidate's estimate reads the same inputs.
    let longest = if candidates.is_empty() { 0 } else { longest_input(event, entity) };
    for rule in candidates {
        let outcome =
            cache.get(rule).and_then(|condition| condition.evaluate_measured(event, entity, longest, max_steps));
        let (matched, reason) = match outcome {
            Ok(true) => (true, format!("`{}` is true", rule.definition.when)),
            Ok(false) => (false, format!("`{}` is false", rule.definition.when)),
            Err(error) => (false, format!("`{}` could not be evaluated: {error}", rule.definition.when)),
        };
        evaluations.push(Evaluation {
            rule_id: rule.id,
            rule_name: rule.definition.name.clone(),
            version: rule.version,
            matched,
            reason,
            actions: if matched { rule.definition.then.iter().map(|a| a.kind().to_string()).collect() } else { vec![] },
        });
        if matched {
            actions.extend(rule.definition.then.iter().cloned().map(|a| (rule.id, a)));
            if rule.definition.stop_on_match {
                break;
            }
        }
    }
    (evaluations, actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(name: &str, priority: i32, when: &str, stop: bool) -> StoredRule {
        StoredRule {
            id: Uuid::new_v4(),
            version: 1,
            definition: serde_json::from_value(json!({
                "name": name, "priority": priority, "on": "approval.*", "when": when,
                "stopOnMatch": stop,
                "then": [{"type": "audit.note", "action": name}]
            }))
            .expect("rule"),
        }
    }

    #[test]
    fn a_condition_reads_event_and_entity() {
        let condition = compile("event.data.amount < 100.0 && entity.status == 'PENDING'").expect("compiles");
        let event = json!({"data": {"amount": 40.0}});
        assert_eq!(condition.evaluate(&event, &json!({"status": "PENDING"})), Ok(true));
        assert_eq!(condition.evaluate(&event, &json!({"status": "APPROVED"})), Ok(false));
    }

    #[test]
    fn compile_refuses_syntax_errors_unknown_variables_and_deep_comprehensions() {
        assert!(compile("event.data.amount <").is_err());
        assert!(compile("request.amount < 3").expect_err("unknown").contains("unknown variable `request`"));
        assert!(compile("event.data.items.all(x, x > 0)").is_ok());
        let deep = "[1].all(a, [2].all(b, [3].all(c, a + b + c > 0)))";
        assert!(compile(deep).expect_err("too deep").contains("nested 3 deep"));
        assert!(compile(&"x".repeat(MAX_CONDITION_CHARS + 1)).is_err());
    }

    /// The examples of docs/rules.md, as written there.
    #[test]
    fn the_documented_conditions_compile_and_mean_what_the_docs_say() {
        let event = json!({
            "type": "approval.decided",
            "data": {"amount": 12000.5, "currency": "EUR", "title": "New Monitor for the laptop",
                     "details": {"tags": ["urgent", "it"]}}
        });
        let entity = json!({"status": "REJECTED"});
        let cases = [
            ("event.data.amount < 100", false),
            ("entity.status == 'PENDING' && event.data.currency == 'USD'", false),
            ("has(event.data.amount) && event.data.amount > 10000.0", true),
            ("event.data.title.contains('laptop') || event.data.title.matches('(?i)monitor')", true),
            ("event.type == 'approval.decided' && entity.status == 'REJECTED'", true),
            ("event.data.details.tags.exists(t, t == 'urgent')", true),
            ("event.data.amount < 100 && event.data.currency == 'EUR'", false),
        ];
        for (condition, expected) in cases {
            let compiled = compile(condition).unwrap_or_else(|e| panic!("{condition}: {e}"));
            assert_eq!(compiled.evaluate(&event, &entity), Ok(expected), "{condition}");
        }
        let no_amount = json!({"data": {}});
        assert_eq!(
            compile("has(event.data.amount) && event.data.amount > 10000.0")
                .expect("compiles")
                .evaluate(&no_amount, &json!({})),
            Ok(false)
        );
    }

    #[test]
    fn a_non_bool_result_is_an_error_not_a_match() {
        let condition = compile("event.data.amount").expect("compiles");
        assert!(condition.evaluate(&json!({"data": {"amount": 1}}), &json!({})).is_err());
    }

    #[test]
    fn rules_run_in_priority_order_and_stop_on_match() {
        let cache = ConditionCache::default();
        let rules =
            vec![rule("third", 30, "true", false), rule("first", 10, "false", false), rule("second", 20, "true", true)];
        let (evaluations, actions) =
            evaluate(&cache, &rules, "approval.requested", &json!({}), &json!({}), DEFAULT_MAX_STEPS);
        let names: Vec<_> = evaluations.iter().map(|e| (e.rule_name.as_str(), e.matched)).collect();
        assert_eq!(names, vec![("first", false), ("second", true)]);
        assert_eq!(actions.len(), 1);
        assert!(evaluations[0].reason.contains("is false"));
    }

    #[test]
    fn rules_for_other_event_types_are_not_evaluated() {
        let cache = ConditionCache::default();
        let rules = vec![rule("r", 1, "true", false)];
        let (evaluations, _) = evaluate(&cache, &rules, "workflow.created", &json!({}), &json!({}), DEFAULT_MAX_STEPS);
        assert!(evaluations.is_empty());
    }

    #[test]
    fn an_attacker_sized_event_is_over_budget_at_once_and_a_big_flat_one_is_evaluated() {
        let nested = compile("event.data.items.all(x, event.data.items.exists(y, y == x))").expect("compiles");
        let items: Vec<u32> = (0..3000).collect();
        let event = json!({"data": {"items": items}});
        let started = std::time::Instant::now();
        let refused = nested.evaluate_within(&event, &json!({}), DEFAULT_MAX_STEPS).expect_err("over budget");
        assert!(refused.starts_with("over budget"), "{refused}");
        assert!(started.elapsed() < std::time::Duration::from_millis(100), "refused in {:?}", started.elapsed());
        // Small enough, the same condition runs.
        let few = json!({"data": {"items": [1, 2, 3]}});
        assert_eq!(nested.evaluate_within(&few, &json!({}), DEFAULT_MAX_STEPS), Ok(true));
        // One level over a list as long as a message can carry is within the budget.
        let flat = compile("event.data.items.all(x, x >= 0)").expect("compiles");
        let long: Vec<u32> = (0..100_000).collect();
        assert_eq!(flat.evaluate_within(&json!({"data": {"items": long}}), &json!({}), DEFAULT_MAX_STEPS), Ok(true));
    }

    #[test]
    fn a_condition_over_budget_on_any_event_is_refused_when_saved() {
        let list = format!("[{}]", (0..400).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        let refused = compile(&format!("{list}.all(a, {list}.exists(b, a == b))")).expect_err("over budget");
        assert!(refused.contains("over the budget"), "{refused}");
    }
}

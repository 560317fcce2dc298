//! `insights.recompute`: insights derived from the approvals, never made up. Every figure comes
//! with the ids of the rows it was computed from (in `evidence`), and the method is fixed:
//!
//! - **SLA breaches**: open approvals (`PENDING`, `ESCALATED`) older than their workflow's SLA.
//! - **Turnaround**: hours from request to decision over the window; percentiles by linear
//!   interpolation between closest ranks (the "linear" method of numpy and R type 7).
//! - **Approver bottlenecks**: people (not rules) with at least 5 decisions whose median
//!   turnaround is more than twice the median of all people's decisions, and an hour longer.
//! - **Anomalous amounts**: per workflow and currency with at least 10 amounts, the robust
//!   z-score `0.6745 · (x − median) / MAD`; above 3.5 in absolute value is anomalous
//!   (Iglewicz and Hoaglin). Skipped when the MAD is 0.
//! - **Rule candidates**: per workflow, amount bands (up to 100, 100–1,000, 1,000–10,000) taken
//!   from the lowest up while each band on its own has at least 20 decisions by people with at
//!   least 95 % approved; the bound is the top of the last such band, and comes with a ready rule
//!   that auto-approves requests up to it. A band with too few decisions ends the walk, so the
//!   rule never reaches amounts nobody decided.
//!
//! Params: `windowDays` (default 90): decisions and amounts older than that are left out.

use std::collections::BTreeMap;
use std::time::Duration;

use automation_shared::db::insights::{self, Insight};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::types::Json;
use uuid::Uuid;

use super::{TaskContext, TaskError, TaskOutput, TaskSpec};

pub fn spec() -> TaskSpec {
    TaskSpec {
        name: "insights.recompute",
        max_attempts: 3,
        time_limit: Duration::from_secs(300),
        run: |ctx| Box::pin(run(ctx)),
    }
}

pub const BOTTLENECK_MIN_DECISIONS: usize = 5;
pub const ANOMALY_MIN_AMOUNTS: usize = 10;
pub const ANOMALY_THRESHOLD: f64 = 3.5;
pub const CANDIDATE_MIN_DECISIONS: usize = 20;
pub const CANDIDATE_MIN_RATE: f64 = 0.95;
pub const CANDIDATE_BOUNDS: [f64; 3] = [100.0, 1_000.0, 10_000.0];
/// Row ids listed per figure; the count is always complete.
const MAX_IDS: usize = 1000;

/// The `p`th percentile (0–100) of sorted values, by linear interpolation.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64))
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

/// The median, the median absolute deviation, and each value's robust z-score.
pub fn robust_z(values: &[f64]) -> Option<(f64, f64, Vec<f64>)> {
    let m = median(values)?;
    let deviations: Vec<f64> = values.iter().map(|x| (x - m).abs()).collect();
    let mad = median(&deviations)?;
    if mad == 0.0 {
        return None;
    }
    Some((m, mad, values.iter().map(|x| 0.6745 * (x - m) / mad).collect()))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A decided approval.
#[derive(Debug, Clone)]
pub struct Decided {
    pub id: String,
    pub workflow_id: String,
    pub workflow_name: String,
    pub amount: Option<f64>,
    pub approved: bool,
    pub decided_by: Option<String>,
    pub hours: f64,
}

impl Decided {
    fn by_person(&self) -> bool {
        self.decided_by.as_deref().is_some_and(|d| !d.starts_with("rule:"))
    }
}

/// An approval with an amount.
#[derive(Debug, Clone)]
pub struct Amount {
    pub id: String,
    pub workflow_id: String,
    pub currency: String,
    pub amount: f64,
}

/// An open approval past its SLA.
#[derive(Debug, Clone)]
pub struct Overdue {
    pub id: String,
    pub workflow_id: String,
    pub sla_hours: u32,
    pub hours_open: f64,
}

fn ids<'a>(rows: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    rows.take(MAX_IDS).collect()
}

fn insight(
    kind: &str,
    severity: &str,
    title: String,
    summary: String,
    evidence: Value,
    recommendation: &str,
    now: DateTime<Utc>,
) -> Insight {
    Insight {
        id: Uuid::now_v7(),
        kind: kind.into(),
        severity: severity.into(),
        title,
        summary,
        evidence: Json(evidence),
        recommendation: recommendation.into(),
        suggested_rule: None,
        generated_at: now,
    }
}

pub fn sla_breaches(overdue: &[Overdue], now: DateTime<Utc>) -> Option<Insight> {
    if overdue.is_empty() {
        return None;
    }
    let rows: Vec<Value> = overdue
        .iter()
        .take(MAX_IDS)
        .map(|o| json!({"approvalId": o.id, "workflowId": o.workflow_id, "slaHours": o.sla_hours, "hoursOpen": round(o.hours_open)}))
        .collect();
    Some(insight(
        "sla_breach",
        "high",
        format!("{} approval(s) are past their SLA", overdue.len()),
        format!("{} open approval(s) have waited longer than their workflow's SLA.", overdue.len()),
        json!({"count": overdue.len(), "approvals": rows}),
        "Escalate them (approvals.escalate_stale runs every 15 minutes) or add an approval.escalate rule.",
        now,
    ))
}

pub fn turnaround(decided: &[Decided], window_days: u32, now: DateTime<Utc>) -> Option<Insight> {
    let mut hours: Vec<f64> = decided.iter().map(|d| d.hours).collect();
    hours.sort_by(f64::total_cmp);
    let (p50, p90, p95) = (percentile(&hours, 50.0)?, percentile(&hours, 90.0)?, percentile(&hours, 95.0)?);
    let mut per_workflow: BTreeMap<&str, (&str, Vec<f64>)> = BTreeMap::new();
    for d in decided {
        per_workflow.entry(&d.workflow_id).or_insert((&d.workflow_name, Vec::new())).1.push(d.hours);
    }
    let per_workflow: Vec<Value> = per_workflow
        .iter()
        .map(|(id, (name, h))| json!({"workflowId": id, "name": name, "decisions": h.len(), "p50Hours": median(h).map(round)}))
        .collect();
    Some(insight(
        "turnaround",
        "info",
        format!("Approvals are decided in {:.1} h (median)", p50),
        format!(
            "Over the last {window_days} days, {} decisions: median {:.1} h, 90th percentile {:.1} h, 95th {:.1} h.",
            hours.len(),
            p50,
            p90,
            p95
        ),
        json!({
            "decisions": hours.len(), "windowDays": window_days, "p50Hours": round(p50), "p90Hours": round(p90), "p95Hours": round(p95),
            "method": "linear interpolation between closest ranks", "perWorkflow": per_workflow,
            "approvalIds": ids(decided.iter().map(|d| &d.id)),
        }),
        "Watch the 95th percentile: it is what the slowest requesters wait.",
        now,
    ))
}

pub fn bottlenecks(decided: &[Decided], now: DateTime<Utc>) -> Vec<Insight> {
    let people: Vec<&Decided> = decided.iter().filter(|d| d.by_person()).collect();
    let Some(team) = median(&people.iter().map(|d| d.hours).collect::<Vec<_>>()) else { return Vec::new() };
    let mut by_approver: BTreeMap<&str, Vec<&Decided>> = BTreeMap::new();
    for d in &people {
        by_approver.entry(d.decided_by.as_deref().unwrap_or_default()).or_default().push(d);
    }
    by_approver
        .into_iter()
        .filter(|(_, rows)| rows.len() >= BOTTLENECK_MIN_DECISIONS)
        .filter_map(|(approver, rows)| {
            let own = median(&rows.iter().map(|d| d.hours).collect::<Vec<_>>())?;
            (own > 2.0 * team && own - team > 1.0).then(|| {
                insight(
                    "approver_bottleneck",
                    "medium",
                    format!("Approver {approver} takes {own:.1} h per decision (team median {team:.1} h)"),
                    format!("{} decisions by {approver} took a median of {own:.1} h, more than twice the team's {team:.1} h.", rows.len()),
                    json!({
                        "approverId": approver, "decisions": rows.len(), "medianHours": round(own), "teamMedianHours": round(team),
                        "approvalIds": ids(rows.iter().map(|d| &d.id)),
                    }),
                    "Share the load, or escalate approvals this approver has held longer than the SLA.",
                    now,
                )
            })
        })
        .collect()
}

pub fn anomalies(amounts: &[Amount], now: DateTime<Utc>) -> Vec<Insight> {
    let mut groups: BTreeMap<(&str, &str), Vec<&Amount>> = BTreeMap::new();
    for a in amounts {
        groups.entry((&a.workflow_id, &a.currency)).or_default().push(a);
    }
    groups
        .into_iter()
        .filter(|(_, rows)| rows.len() >= ANOMALY_MIN_AMOUNTS)
        .filter_map(|((workflow, currency), rows)| {
            let values: Vec<f64> = rows.iter().map(|a| a.amount).collect();
            let (m, mad, z) = robust_z(&values)?;
            let flagged: Vec<Value> = rows
                .iter()
                .zip(&z)
                .filter(|(_, z)| z.abs() > ANOMALY_THRESHOLD)
                .map(|(a, z)| json!({"approvalId": a.id, "amount": a.amount, "robustZ": round(*z)}))
                .collect();
            (!flagged.is_empty()).then(|| {
                insight(
                    "anomalous_amount",
                    "medium",
                    format!("{} unusual {currency} amount(s) in workflow {workflow}", flagged.len()),
                    format!("Against a median of {m} {currency} (MAD {mad}), {} amount(s) have a robust z-score above {ANOMALY_THRESHOLD}.", flagged.len()),
                    json!({
                        "workflowId": workflow, "currency": currency, "count": rows.len(), "median": m, "mad": mad,
                        "threshold": ANOMALY_THRESHOLD, "method": "robust z = 0.6745 (x - median) / MAD", "anomalies": flagged,
                        "approvalIds": ids(rows.iter().map(|a| &a.id)),
                    }),
                    "Check these requests by hand; consider a rule that escalates amounts this far from the usual.",
                    now,
                )
            })
        })
        .collect()
}

pub fn rule_candidates(decided: &[Decided], now: DateTime<Utc>) -> Vec<Insight> {
    let mut by_workflow: BTreeMap<&str, Vec<&Decided>> = BTreeMap::new();
    for d in decided.iter().filter(|d| d.by_person()) {
        by_workflow.entry(&d.workflow_id).or_default().push(d);
    }
    by_workflow
        .into_iter()
        .filter_map(|(workflow, rows)| {
            // Bands from the lowest up, each judged on its own decisions: the bound grows only as
            // far as the data goes, never into amounts nobody decided.
            let mut best = None;
            let mut lower = f64::NEG_INFINITY;
            for bound in CANDIDATE_BOUNDS {
                let band: Vec<&&Decided> = rows.iter().filter(|d| d.amount.is_some_and(|a| a > lower && a <= bound)).collect();
                let approved = band.iter().filter(|d| d.approved).count();
                if band.len() < CANDIDATE_MIN_DECISIONS || (approved as f64) < CANDIDATE_MIN_RATE * band.len() as f64 {
                    break;
                }
                best = Some(bound);
                lower = bound;
            }
            let bound = best?;
            let within: Vec<&&Decided> = rows.iter().filter(|d| d.amount.is_some_and(|a| a <= bound)).collect();
            let approved = within.iter().filter(|d| d.approved).count();
            let rate = approved as f64 / within.len().max(1) as f64;
            let name = &rows[0].workflow_name;
            let reason = format!("{approved} of {} similar requests were approved", within.len());
            let mut candidate = insight(
                "rule_candidate",
                "low",
                format!("Requests up to {bound} in {name} are nearly always approved"),
                format!("{approved} of {} requests up to {bound} in workflow {name} ({:.1} %) were approved by people.", within.len(), rate * 100.0),
                json!({
                    "workflowId": workflow, "workflowName": name, "upTo": bound, "decisions": within.len(), "approved": approved,
                    "rate": round(rate), "approvalIds": ids(within.iter().map(|d| &d.id)),
                }),
                "Consider the suggested rule: it approves such requests as soon as they arrive (POST it to /api/v1/rules).",
                now,
            );
            candidate.suggested_rule = Some(Json(json!({
                "name": format!("auto-approve {name} up to {bound}"),
                "description": format!("Suggested by insights: {reason} ({:.1} %).", rate * 100.0),
                "enabled": true,
                "priority": 100,
                "on": "approval.requested",
                "when": format!("event.data.workflowId == '{workflow}' && has(event.data.amount) && event.data.amount <= {bound:.1}"),
                "then": [{"type": "approval.decide", "status": "APPROVED", "reason": format!("auto-approved: {reason}")}],
                "stopOnMatch": false
            })));
            Some(candidate)
        })
        .collect()
}

/// A decided approval as read for [`Decided`].
#[derive(sqlx::FromRow)]
struct DecidedRow {
    id: String,
    workflow_id: String,
    workflow_name: String,
    amount: Option<f64>,
    status: String,
    decided_by: Option<String>,
    created_at: DateTime<Utc>,
    decided_at: DateTime<Utc>,
}

async fn run(ctx: TaskContext) -> Result<TaskOutput, TaskError> {
    let window_days = match ctx.params.get("windowDays").and_then(Value::as_u64) {
        Some(d) if (1..=3650).contains(&d) => d as u32,
        Some(_) => return Err(TaskError::fatal("params.windowDays must be 1 to 3650")),
        None => 90,
    };
    let db = |e: sqlx::Error| TaskError::retryable(format!("could not read the data: {e}"));
    let now = Utc::now();
    let decided: Vec<DecidedRow> = sqlx::query_as(
        "select a.id, a.workflow_id, w.name as workflow_name, cast(a.amount as double) as amount, a.status, a.decided_by, a.created_at, a.decided_at \
         from approvals a join workflows w on w.id = a.workflow_id \
         where a.decided_at is not null and a.decided_at >= now(6) - interval ? day order by a.seq",
    )
    .bind(window_days)
    .fetch_all(&ctx.pool)
    .await
    .map_err(db)?;
    let decided: Vec<Decided> = decided
        .into_iter()
        .map(|row| Decided {
            id: row.id,
            workflow_id: row.workflow_id,
            workflow_name: row.workflow_name,
            amount: row.amount,
            approved: row.status == "APPROVED",
            decided_by: row.decided_by,
            hours: (row.decided_at - row.created_at).num_milliseconds() as f64 / 3_600_000.0,
        })
        .collect();
    let amounts: Vec<(String, String, String, f64)> = sqlx::query_as(
        "select id, workflow_id, currency, cast(amount as double) from approvals \
         where amount is not null and currency is not null and created_at >= now(6) - interval ? day order by seq",
    )
    .bind(window_days)
    .fetch_all(&ctx.pool)
    .await
    .map_err(db)?;
    let amounts: Vec<Amount> = amounts
        .into_iter()
        .map(|(id, workflow_id, currency, amount)| Amount { id, workflow_id, currency, amount })
        .collect();
    let overdue: Vec<(String, String, u32, DateTime<Utc>)> = sqlx::query_as(
        "select a.id, a.workflow_id, w.approval_sla_hours, a.created_at from approvals a join workflows w on w.id = a.workflow_id \
         where a.status in ('PENDING', 'ESCALATED') and w.approval_sla_hours is not null \
         and a.created_at < now(6) - interval w.approval_sla_hours hour order by a.created_at",
    )
    .fetch_all(&ctx.pool)
    .await
    .map_err(db)?;
    let overdue: Vec<Overdue> = overdue
        .into_iter()
        .map(|(id, workflow_id, sla_hours, created)| Overdue {
            id,
            workflow_id,
            sla_hours,
            hours_open: (now - created).num_milliseconds() as f64 / 3_600_000.0,
        })
        .collect();

    let mut all: Vec<Insight> = Vec::new();
    all.extend(sla_breaches(&overdue, now));
    all.extend(turnaround(&decided, window_days, now));
    all.extend(bottlenecks(&decided, now));
    all.extend(anomalies(&amounts, now));
    all.extend(rule_candidates(&decided, now));
    let generation = Uuid::now_v7();
    let mut tx = ctx.pool.begin().await.map_err(db)?;
    insights::insert_generation(&mut tx, generation, &all).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    let kinds: Vec<&str> = all.iter().map(|i| i.kind.as_str()).collect();
    Ok(TaskOutput {
        result: json!({"generationId": generation, "insights": all.len(), "kinds": kinds}),
        events: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_linearly_between_ranks() {
        let sorted = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(percentile(&sorted, 50.0), Some(3.0));
        // rank 0.9 * 4 = 3.6: 4 + 0.6 * (10 - 4) = 7.6
        assert!((percentile(&sorted, 90.0).unwrap_or_default() - 7.6).abs() < 1e-9);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn the_robust_z_score_uses_median_and_mad() {
        let values = [10.0, 11.0, 12.0, 13.0, 14.0, 1000.0];
        let (m, mad, z) = robust_z(&values).expect("non-zero MAD");
        assert_eq!(m, 12.5);
        // deviations 2.5 1.5 0.5 0.5 1.5 987.5 → median 1.5
        assert_eq!(mad, 1.5);
        assert!((z[5] - 0.6745 * 987.5 / 1.5).abs() < 1e-9);
        assert!(robust_z(&[5.0, 5.0, 5.0]).is_none(), "no spread, no score");
    }

    #[test]
    fn a_suggested_rule_compiles_and_matches_what_it_describes() {
        let now = Utc::now();
        let rows: Vec<Decided> = (0..20)
            .map(|i| Decided {
                id: format!("a{i}"),
                workflow_id: "wf".into(),
                workflow_name: "Office".into(),
                amount: Some(50.0),
                approved: true,
                decided_by: Some("u1".into()),
                hours: 1.0,
            })
            .collect();
        let found = rule_candidates(&rows, now);
        assert_eq!(found.len(), 1);
        let rule: automation_shared::rules::RuleDefinition =
            serde_json::from_value(found[0].suggested_rule.clone().expect("a rule").0).expect("a valid rule");
        rule.check().expect("it compiles");
        let condition = automation_shared::rules::engine::compile(&rule.when).expect("compiles");
        let event = json!({"data": {"workflowId": "wf", "amount": 80.0}});
        assert_eq!(condition.evaluate(&event, &json!({})), Ok(true));
        assert_eq!(condition.evaluate(&json!({"data": {"workflowId": "wf", "amount": 180.0}}), &json!({})), Ok(false));
        assert_eq!(condition.evaluate(&json!({"data": {"workflowId": "wf"}}), &json!({})), Ok(false));
    }
}

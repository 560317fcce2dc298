//! The disaster-recovery drill (`make drill-dr`): two regions on this machine, each its own
//! MariaDB (the DR one a GTID replica of the primary's), RabbitMQ, API and workers. Load runs in
//! the primary (HTTP commands answered 202, a Spring-style publisher with confirms); the whole
//! primary region is SIGKILLed; `scripts/failover.sh --local` makes DR the primary; load runs
//! there; then `scripts/failback.sh prepare` and `switch` bring it back. It prints a tally with
//! the RPO (events acknowledged in the primary that DR never applied, and events applied twice)
//! and the RTO (from the kill until the DR API takes a write, and until a DR worker applied it),
//! and fails on anything applied twice, on an event acknowledged in DR not applied, on an event
//! acknowledged anywhere and not applied once the primary is back, and on a broken audit chain.

#![expect(clippy::expect_used, reason = "a drill: a failed set-up stops it with its message")]

mod load;
mod region;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use region::{APP_PASSWORD, APP_USER, DATABASE, REPLICATION_PASSWORD, REPLICATION_USER, Region};

const EMAIL: &str = "drill@example.com";
const PASSWORD: &str = "drill password, long enough";

/// The environment both regions' scripts read (scripts/dr-lib.sh), with the hook that makes
/// their scaling steps act on this drill's processes.
fn script_env(p: &Region, d: &Region, hook: &Path) -> Vec<(String, String)> {
    [
        ("PRIMARY_REGION", p.name.to_string()),
        ("DR_REGION", d.name.to_string()),
        ("PRIMARY_DATABASE_ADMIN_URL", p.admin_url()),
        ("PRIMARY_DATABASE_SERVER_ID", p.server_id.to_string()),
        ("PRIMARY_DATABASE_HOST_FOR_DR", format!("127.0.0.1:{}", p.db.port)),
        ("PRIMARY_REPLICATION_USER", REPLICATION_USER.to_string()),
        ("PRIMARY_REPLICATION_PASSWORD", REPLICATION_PASSWORD.to_string()),
        ("PRIMARY_AMQP_URL", p.amqp_url()),
        ("PRIMARY_RABBITMQCTL", p.rabbitmqctl()),
        ("DR_DATABASE_ADMIN_URL", d.admin_url()),
        ("DR_DATABASE_URL", d.app_url()),
        ("DR_DATABASE_SERVER_ID", d.server_id.to_string()),
        ("DR_DATABASE_HOST_FOR_PRIMARY", format!("127.0.0.1:{}", d.db.port)),
        ("DR_REPLICATION_USER", REPLICATION_USER.to_string()),
        ("DR_REPLICATION_PASSWORD", REPLICATION_PASSWORD.to_string()),
        ("DR_AMQP_URL", d.amqp_url()),
        ("DR_RABBITMQCTL", d.rabbitmqctl()),
        ("AUTOMATION_AMQP__PREFIX", region::PREFIX.to_string()),
        ("AUTOMATION_WORKER_BIN", region::worker_binary().display().to_string()),
        ("DR_WORKER_REPLICAS", "2".to_string()),
        ("DR_DRAIN_SECONDS", "120".to_string()),
        ("DR_LOCAL_SCALE", hook.join("scale.sh").display().to_string()),
        ("DRILL_HOOK_DIR", hook.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The hook's directory, removed when the drill ends, also when it fails.
struct HookDir(std::path::PathBuf);

impl Drop for HookDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The hook: writes the request where the drill sees it and waits for the drill's answer.
fn write_hook(dir: &Path) {
    std::fs::create_dir_all(dir).expect("hook directory");
    let script = "#!/bin/sh\n\
        req=\"$DRILL_HOOK_DIR/request.$$\"\n\
        echo \"$1 $2 $3\" > \"$req.tmp\" && mv \"$req.tmp\" \"$req\"\n\
        while [ ! -e \"$DRILL_HOOK_DIR/done.$$\" ]; do sleep 0.05; done\n\
        rm -f \"$DRILL_HOOK_DIR/done.$$\"\n";
    let path = dir.join("scale.sh");
    std::fs::write(&path, script).expect("hook");
    let _ = std::process::Command::new("chmod").arg("+x").arg(&path).status();
}

/// What a script run gave: its exit code, stdout (the JSON summary), stderr (the progress), and
/// what the database of the first region whose workers it started had applied just before they
/// started (after the promotion and the replay, before any worker ran there).
struct ScriptRun {
    code: i32,
    summary: serde_json::Value,
    progress: String,
    applied_before_workers: Option<BTreeSet<String>>,
}

/// Runs a DR script to its end, doing the scaling it asks for.
async fn run_script(script: &str, args: &[&str], p: &mut Region, d: &mut Region, hook: &Path) -> ScriptRun {
    run_script_with(script, args, &[], p, d, hook).await
}

/// The same, with some of the scripts' settings changed (`extra` wins).
async fn run_script_with(
    script: &str,
    args: &[&str],
    extra: &[(&str, &str)],
    p: &mut Region,
    d: &mut Region,
    hook: &Path,
) -> ScriptRun {
    let mut applied_before_workers = None;
    let started = Instant::now();
    let mut child = tokio::process::Command::new("bash")
        .arg(region::scripts().join(script))
        .args(args)
        .envs(script_env(p, d, hook))
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A drill that fails while a script runs stops the script too.
        .kill_on_drop(true)
        .spawn()
        .expect("bash runs the script");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text).await;
        text
    });
    let err = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let status = loop {
        for entry in std::fs::read_dir(hook).expect("hook directory").flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(pid) = name.strip_prefix("request.").filter(|p| !p.ends_with(".tmp")) else {
                continue;
            };
            let request = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let _ = std::fs::remove_file(entry.path());
            let parts: Vec<&str> = request.split_whitespace().collect();
            let [name_of_region, component, replicas] = parts[..] else {
                panic!("the hook got {request:?}");
            };
            let replicas: usize = replicas.parse().expect("replicas");
            let region = if name_of_region == p.name { &mut *p } else { &mut *d };
            println!("    [drill] {} {component} -> {replicas}", region.name);
            if component == "worker" && replicas > 0 && region.workers.is_empty() && applied_before_workers.is_none() {
                let pool = region.pool().await;
                applied_before_workers = Some(load::applied(&pool).await.0);
                pool.close().await;
            }
            match component {
                "worker" => region.scale_workers(replicas).await,
                _ if replicas == 0 => region.stop_api().await,
                _ if region.api.is_none() => region.start_api().await,
                _ => {}
            }
            std::fs::write(hook.join(format!("done.{pid}")), "").expect("answer the hook");
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stdout = out.await.unwrap_or_default();
    let stderr = err.await.unwrap_or_default();
    println!("--- {script} {} ({:?}, exit {:?})\n{stderr}{stdout}", args.join(" "), started.elapsed(), status.code());
    let summary = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    ScriptRun { code: status.code().unwrap_or(-1), summary, progress: stderr, applied_before_workers }
}

async fn sql(pool: &sqlx::MySqlPool, statement: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

fn audit_intact(region: &Region) -> (bool, String) {
    let (ok, out) = region.cli(&["audit", "verify", "--json"]);
    let intact = ok && out.contains("\"problems\":[]");
    (intact, out.lines().last().unwrap_or_default().chars().take(300).collect())
}

fn union(sets: &[&BTreeSet<String>]) -> BTreeSet<String> {
    sets.iter().flat_map(|s| s.iter().cloned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primary_region_is_lost_dr_takes_over_then_the_primary_comes_back() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let drill_started = Instant::now();
    let hook_dir =
        HookDir(std::env::temp_dir().join(format!("automation-drill-hook-{}", uuid::Uuid::new_v4().simple())));
    let hook = hook_dir.0.clone();
    write_hook(&hook);
    let mut p = Region::start("eu-west-1", 1, false).await;
    let mut d = Region::start("eu-central-1", 2, true).await;

    // The primary's database: the application's user (no SUPER), the replication user.
    let root = sqlx::mysql::MySqlPoolOptions::new().max_connections(1).connect(&p.admin_url()).await.expect("P");
    for statement in [
        format!("create user '{REPLICATION_USER}'@'127.0.0.1' identified by '{REPLICATION_PASSWORD}'"),
        format!("grant replication slave on *.* to '{REPLICATION_USER}'@'127.0.0.1'"),
        format!("create database {DATABASE}"),
        format!("create user '{APP_USER}'@'127.0.0.1' identified by '{APP_PASSWORD}'"),
        format!("grant all on {DATABASE}.* to '{APP_USER}'@'127.0.0.1'"),
    ] {
        sql(&root, &statement).await;
    }
    root.close().await;
    let (ok, out) = p.cli(&["migrate"]);
    assert!(ok, "migrate: {out}");
    for region in [&p, &d] {
        let (ok, out) = region.cli(&["topology"]);
        assert!(ok, "topology in {}: {out}", region.name);
    }
    // The standby: DR replicates the primary from its first transaction; the copy queue and shovel.
    let standby = run_script("dr-standby.sh", &["--local", "--replicate", "--json"], &mut p, &mut d, &hook).await;
    assert_eq!(standby.code, 0, "dr-standby.sh: {}", standby.progress);
    let user = std::process::Command::new(region::api_binary())
        .args([
            "user",
            "create",
            "--email",
            EMAIL,
            "--name",
            "Drill",
            "--role",
            "service",
            "--password-env",
            "DRILL_PASSWORD",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", p.app_url())
        .env("AMQP_URL", p.amqp_url())
        .env("DRILL_PASSWORD", PASSWORD)
        .output()
        .expect("automation-api user create");
    assert!(user.status.success(), "user create: {}", String::from_utf8_lossy(&user.stderr));

    p.start_api().await;
    p.scale_workers(2).await;
    // The DR API runs in standby (as the dr overlay's one pod), on the replica and the DR broker.
    d.start_api().await;
    let token = load::login(&p.api_base(), EMAIL, PASSWORD).await;

    // The scripts refuse while the primary lives, and a database that is not the one named.
    let refused = run_script("failover.sh", &["--local", "--json"], &mut p, &mut d, &hook).await;
    assert_eq!(refused.code, 5, "failover.sh with the primary alive: {}", refused.progress);
    assert!(refused.progress.contains("still connected to the primary"), "{}", refused.progress);
    let refused = run_script_with(
        "failover.sh",
        &["--local", "--json"],
        &[("DR_DATABASE_SERVER_ID", "7")],
        &mut p,
        &mut d,
        &hook,
    )
    .await;
    assert_eq!(refused.code, 5, "failover.sh against the wrong database: {}", refused.progress);
    assert!(refused.progress.contains("wrong database"), "{}", refused.progress);
    assert_eq!(refused.summary["outcome"], "failed", "{}", refused.summary);
    assert!(d.workers.is_empty(), "a refused failover started no DR worker");

    // ---- load in the primary, then the primary region is lost ----
    let stop = Arc::new(AtomicBool::new(false));
    let http = tokio::spawn(load::http(p.api_base(), token.clone(), "p1-http", 4, stop.clone()));
    let spring = tokio::spawn(load::spring(p.amqp_url(), "p1-spring", stop.clone()));
    tokio::time::sleep(Duration::from_secs(15)).await;
    let p_pool = p.pool().await;
    let applied_in_p_before_kill = load::applied(&p_pool).await.0.len();
    p_pool.close().await;
    let d_pool = d.pool().await;
    let replicated_before_kill = load::applied(&d_pool).await.0.len();
    p.lose().await;
    let killed = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let p1_http = http.await.expect("http load");
    let p1_spring = spring.await.expect("spring load");
    let p1 = union(&[&p1_http.ids, &p1_spring.ids]);
    println!(
        "    [drill] primary lost after {} HTTP 202s and {} Spring confirms; about {applied_in_p_before_kill} applied there and {replicated_before_kill} replicated to DR just before the kill",
        p1_http.ids.len(),
        p1_spring.ids.len()
    );

    // ---- failover ----
    let env_out = hook.join("active.env");
    let env_arg = env_out.display().to_string();
    let failover =
        run_script("failover.sh", &["--local", "--json", "--env-out", &env_arg], &mut p, &mut d, &hook).await;
    assert_eq!(failover.code, 0, "failover.sh: {}", failover.progress);
    assert_eq!(failover.summary["outcome"], "done", "{}", failover.summary);
    let progress = failover.progress.clone();
    let failover_took = killed.elapsed();
    let active = std::fs::read_to_string(&env_out).expect("failover.sh --env-out wrote the active region");
    assert!(active.contains(&format!("DATABASE_URL={}", d.app_url())), "the configuration points at DR: {active}");
    let replayed: usize = progress
        .lines()
        .find_map(|l| l.trim().strip_prefix("replayed ").and_then(|r| r.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0);
    // RTO: the DR API takes a write, and a DR worker applies it.
    let client = reqwest::Client::new();
    let probe = "rto-probe".to_string();
    while !load::post_event(&client, &d.api_base(), &token, &probe).await {
        assert!(killed.elapsed() < Duration::from_secs(300), "the DR API took no write within 300 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rto_accept = killed.elapsed();
    let probe_set = BTreeSet::from([probe.clone()]);
    let (seen, _) = load::wait_applied(&d_pool, &probe_set, Duration::from_secs(120), Duration::from_secs(120)).await;
    assert!(seen.contains(&probe), "the DR workers did not apply a write within 120 s");
    let rto_apply = killed.elapsed();

    // ---- the DR region serves ----
    let d1_http = load::http_burst(&d.api_base(), &token, "d1-http", 150).await;
    let stop = Arc::new(AtomicBool::new(false));
    let spring = tokio::spawn(load::spring(d.amqp_url(), "d1-spring", stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let d1_spring = spring.await.expect("spring load");
    let d1 = union(&[&d1_http.ids, &d1_spring.ids, &probe_set]);
    let everything = union(&[&p1, &d1]);
    let (in_dr, records_dr) =
        load::wait_applied(&d_pool, &everything, Duration::from_secs(15), Duration::from_secs(180)).await;
    let rpo_lost: Vec<&String> = p1.iter().filter(|id| !in_dr.contains(*id)).collect();
    // What the replica had of the primary's acknowledged events when the DR workers started, and
    // what only the standby queue's copies brought (the RPO without the shovel).
    let replicated = failover.applied_before_workers.clone().unwrap_or_default();
    let by_replication = p1.iter().filter(|id| replicated.contains(*id)).count();
    let by_replay = p1.iter().filter(|id| in_dr.contains(*id) && !replicated.contains(*id)).count();
    let applied_unacknowledged = in_dr.iter().filter(|id| !everything.contains(*id)).count();
    let dr_lost: Vec<&String> = d1.iter().filter(|id| !in_dr.contains(*id)).collect();
    let duplicated_dr = records_dr - in_dr.len();
    let (dr_audit, dr_audit_says) = audit_intact(&d);
    println!(
        "TALLY dr-failover                               primary: http-202={} spring-confirmed={} | lost-in-DR (RPO)={} applied-twice={} | in DR by replication={by_replication}, only from the standby queue's copies={by_replay} (of {} replayed), applied though unacknowledged={applied_unacknowledged} | DR: acknowledged={} lost={} | RTO: failover.sh done {:.1}s, DR API takes writes {:.1}s, DR worker applied one {:.1}s after the kill | audit-intact={dr_audit}",
        p1_http.ids.len(),
        p1_spring.ids.len(),
        rpo_lost.len(),
        duplicated_dr,
        replayed,
        d1.len(),
        dr_lost.len(),
        failover_took.as_secs_f64(),
        rto_accept.as_secs_f64(),
        rto_apply.as_secs_f64()
    );
    if !rpo_lost.is_empty() {
        println!(
            "    [drill] acknowledged in the primary, not applied in DR: {:?}",
            rpo_lost.iter().take(20).collect::<Vec<_>>()
        );
    }
    assert_eq!(duplicated_dr, 0, "events applied twice in DR");
    assert!(dr_lost.is_empty(), "events acknowledged in DR and not applied there: {dr_lost:?}");
    assert!(dr_audit, "audit verify in DR: {dr_audit_says}");

    // ---- failback: the primary region comes back on its old disks, is re-seeded, switched to ----
    p.db.restart().await;
    p.broker.restart().await;
    let prepare = run_script(
        "failback.sh",
        &["prepare", "--local", "--json", "--discard-old-primary", "--databases", DATABASE],
        &mut p,
        &mut d,
        &hook,
    )
    .await;
    assert_eq!(prepare.code, 0, "failback.sh prepare: {}", prepare.progress);
    // DR keeps serving while the primary catches up from it.
    let d2 = load::http_burst(&d.api_base(), &token, "d2-http", 100).await;
    let switch_started = Instant::now();
    let switch = run_script("failback.sh", &["switch", "--local", "--json"], &mut p, &mut d, &hook).await;
    assert_eq!(switch.code, 0, "failback.sh switch: {}", switch.progress);
    let switch_took = switch_started.elapsed();
    let p3_http = load::http_burst(&p.api_base(), &token, "p3-http", 150).await;
    let stop = Arc::new(AtomicBool::new(false));
    let spring = tokio::spawn(load::spring(p.amqp_url(), "p3-spring", stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let p3_spring = spring.await.expect("spring load");
    let p3 = union(&[&p3_http.ids, &p3_spring.ids]);
    let all = union(&[&p1, &d1, &d2.ids, &p3]);
    let p_pool = p.pool().await;
    let (in_p, records_p) = load::wait_applied(&p_pool, &all, Duration::from_secs(20), Duration::from_secs(180)).await;
    let lost: Vec<&String> = all.iter().filter(|id| !in_p.contains(*id)).collect();
    let late = p1.iter().filter(|id| !in_dr.contains(*id) && in_p.contains(*id)).count();
    let duplicated = records_p - in_p.len();
    let unacknowledged = in_p.iter().filter(|id| !all.contains(*id)).count();
    // DR replicates the primary again, and keeps copies of its events.
    let (in_dr_after, _) = load::wait_applied(&d_pool, &in_p, Duration::from_secs(30), Duration::from_secs(60)).await;
    let dr_in_sync = in_dr_after == in_p;
    let (_, queues) = d.cli(&["dr", "queues", "--json"]);
    let copies: u64 = serde_json::from_str::<serde_json::Value>(queues.trim())
        .ok()
        .and_then(|q| q["queues"][format!("{}.dr.inbound", region::PREFIX)].as_u64())
        .unwrap_or(0);
    let dead_letters: i64 =
        sqlx::query_scalar("select count(*) from dead_letters").fetch_one(&p_pool).await.expect("dead letters");
    let (p_audit, p_audit_says) = audit_intact(&p);
    println!(
        "TALLY dr-failback                               acknowledged={} applied={} (of them unacknowledged: {unacknowledged}) lost={} applied-twice={} late (applied only after failback)={late} dead-lettered={dead_letters} | switch {:.1}s | DR replica in sync={dr_in_sync}, copies in the standby queue={copies} | audit-intact={p_audit} | drill {:.0}s",
        all.len(),
        in_p.len(),
        lost.len(),
        duplicated,
        switch_took.as_secs_f64(),
        drill_started.elapsed().as_secs_f64()
    );
    assert_eq!(duplicated, 0, "events applied twice after the failback");
    assert!(lost.is_empty(), "acknowledged and never applied: {:?}", lost.iter().take(20).collect::<Vec<_>>());
    assert!(p_audit, "audit verify in the primary: {p_audit_says}");
    assert!(dr_in_sync, "DR does not replicate the primary after the failback");
    assert!(copies as usize >= p3.len(), "the standby queue has {copies} copies of the {} events sent since", p3.len());
    assert_eq!(dead_letters, 0, "dead letters");
    p_pool.close().await;
    d_pool.close().await;
}

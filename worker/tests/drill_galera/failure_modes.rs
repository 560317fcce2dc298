//! Galera's own failure modes, provoked for real on the cluster and told apart the way the worker
//! and the API tell them: a certification failure is a `Conflict` that always resolves; a node
//! outside the primary component (1047) and a read-only node (1290) are `Unavailable`. The
//! migrations apply through HAProxy and replicate; HAProxy's health check takes a node that is
//! not Synced out of service.

use std::time::Duration;

use automation_shared::db::{self, Failure};
use automation_shared::testing::TestEnv;
use automation_shared::testing::galera::GaleraCluster;
use sqlx::mysql::MySqlPoolOptions;

async fn pool(url: &str) -> sqlx::MySqlPool {
    MySqlPoolOptions::new().max_connections(2).connect(url).await.expect("the node answers")
}

#[tokio::test]
async fn galeras_failure_modes_are_transient_and_haproxy_routes_around_them() {
    let cluster = GaleraCluster::start().await;
    let env = TestEnv::on(&cluster.proxy_url(), &automation_shared::testing::amqp_url()).await;
    let database = env.database.clone();

    // The migrations ran through HAProxy (sqlx's `get_lock` included) and replicated: node 3 has
    // every table, and every table has a primary key (Galera replicates rows by key).
    let node3 = pool(&format!("{}/{database}", cluster.node_url(2))).await;
    let tables: i64 = sqlx::query_scalar("select count(*) from information_schema.tables where table_schema = ?")
        .bind(&database)
        .fetch_one(&node3)
        .await
        .expect("tables");
    let without_key: Vec<String> = sqlx::query_scalar(
        "select t.table_name from information_schema.tables t where t.table_schema = ? and not exists \
         (select 1 from information_schema.table_constraints c where c.table_schema = t.table_schema \
          and c.table_name = t.table_name and c.constraint_type = 'PRIMARY KEY')",
    )
    .bind(&database)
    .fetch_all(&node3)
    .await
    .expect("keys");
    let not_innodb: Vec<String> = sqlx::query_scalar(
        "select table_name from information_schema.tables where table_schema = ? and engine <> 'InnoDB'",
    )
    .bind(&database)
    .fetch_all(&node3)
    .await
    .expect("engines");
    println!(
        "GALERA migrations: {tables} tables on node3, without a primary key: {without_key:?}, not InnoDB: {not_innodb:?}"
    );
    assert!(tables >= 15, "the migrations replicated to node 3 ({tables} tables)");
    assert!(without_key.is_empty(), "tables without a primary key: {without_key:?}");
    assert!(not_innodb.is_empty(), "tables not on InnoDB: {not_innodb:?}");

    // A certification conflict: the same row changed on two nodes at once. The transaction on
    // node 1 holds its change open; node 2 commits first; node 1's commit (or its next statement,
    // if the replicated change aborted it first) fails with a deadlock.
    let node1 = pool(&format!("{}/{database}", cluster.node_url(0))).await;
    let node2 = pool(&format!("{}/{database}", cluster.node_url(1))).await;
    sqlx::query("insert into login_failures (scope, failures, window_started_at) values ('galera', 0, now(6))")
        .execute(&node1)
        .await
        .expect("insert");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut local = node1.begin().await.expect("begin");
    sqlx::query("update login_failures set failures = 1 where scope = 'galera'")
        .execute(&mut *local)
        .await
        .expect("the local change");
    sqlx::query("update login_failures set failures = 2 where scope = 'galera'")
        .execute(&node2)
        .await
        .expect("node 2 commits");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let error =
        match sqlx::query("select failures from login_failures where scope = 'galera'").execute(&mut *local).await {
            Err(error) => {
                drop(local);
                error
            }
            Ok(_) => local.commit().await.expect_err("a certification failure at COMMIT"),
        };
    println!("GALERA certification failure: {error}");
    assert_eq!(db::classify(&error), Failure::Conflict, "{error}");
    assert!(db::always_resolves(&error), "a certification failure is run again until it wins: {error}");

    // A node cut off from the primary component answers 1047 to statements on tables, and
    // HAProxy's check takes it out of service.
    sqlx::query("set global wsrep_provider_options = 'gmcast.isolate=1'")
        .execute(&node3)
        .await
        .expect("isolate node 3");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let error = loop {
        match sqlx::query("select count(*) from inbox").execute(&node3).await {
            Err(error) => break error,
            Ok(_) => {
                assert!(tokio::time::Instant::now() < deadline, "node 3 still answered 30 s after its isolation");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    println!("GALERA node outside the primary component: {error}");
    assert!(error.to_string().contains("WSREP has not yet prepared node"), "{error}");
    assert_eq!(db::classify(&error), Failure::Unavailable, "{error}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cluster.proxy_status().iter().any(|(name, status)| name == "node3" && status.starts_with("DOWN")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy kept a node that is not Synced in service: {:?}",
            cluster.proxy_status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sqlx::query("set global wsrep_provider_options = 'gmcast.isolate=0'").execute(&node3).await.expect("rejoin node 3");

    // A read-only node (a former primary after a failover, in a single-primary setup) refuses an
    // application user's writes with 1290.
    sqlx::query("create user 'galera_app'@'127.0.0.1'").execute(&node1).await.expect("user");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "grant select, insert, update, delete on `{database}`.* to 'galera_app'@'127.0.0.1'"
    )))
    .execute(&node1)
    .await
    .expect("grant");
    sqlx::query("set global read_only = 1").execute(&node1).await.expect("read only");
    let app = pool(&format!("mysql://galera_app@127.0.0.1:{}/{database}", cluster.nodes[0].port)).await;
    let error = sqlx::query("update login_failures set failures = 3 where scope = 'galera'")
        .execute(&app)
        .await
        .expect_err("a read-only node refuses the write");
    println!("GALERA read-only node: {error}");
    assert_eq!(db::classify(&error), Failure::Unavailable, "{error}");
    sqlx::query("set global read_only = 0").execute(&node1).await.expect("writable again");
    // Not `close()`: it waits for every connection, and a dead one may never come back.
    drop((app, node1, node2, node3));
    drop(env);
}

//! A 3-node MariaDB Galera cluster of the test's own on 127.0.0.1, behind a real HAProxy, as a
//! replicated MySQL is reached in production. Each node has its own SQL, Galera, IST and SST
//! ports, data directory and socket; the first bootstraps the cluster (`--wsrep-new-cluster`),
//! the others join it by state transfer (rsync). A node can be SIGKILLed and brought back:
//! through IST (its position recovered with `--wsrep-recover`, as Debian's `galera_recovery`
//! does) or, with its data wiped, through a full SST. Everything is stopped and removed when the
//! cluster is dropped, also when the test fails.
//!
//! HAProxy listens in TCP mode with one active server and the other two as backups (one writer at
//! a time, the usual Galera layout: certification conflicts then come only from a failover's
//! in-flight transactions). Its health check is an external check that asks the node for
//! `wsrep_local_state` and `wsrep_ready` and passes only a node that is Synced (4) and ready:
//! `option mysql-check` would pass a donor, a joiner or a node cut off from the primary component,
//! which all complete a handshake and then answer `WSREP has not yet prepared node for
//! application use` (1047). A node marked down has its sessions shut (`on-marked-down
//! shutdown-sessions`), and when the first node is back the backups' sessions are shut
//! (`on-marked-up shutdown-backup-sessions`), so pooled connections move instead of writing to two
//! nodes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::private_rabbitmq::free_port;

const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";

/// One Galera node: its ports and its process.
pub struct GaleraNode {
    pub name: String,
    /// The SQL port.
    pub port: u16,
    /// The group communication port (`gmcast`).
    pub galera_port: u16,
    pub ist_port: u16,
    pub sst_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl GaleraNode {
    fn config_file(&self) -> PathBuf {
        self.dir.join("my.cnf")
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `mysql://root@127.0.0.1:<port>`, without a database.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    fn write_config(&self, cluster: &str, peers: &str) {
        // Options Debian's `wsrep_sst_rsync` reads from the file too (datadir, the receive address).
        let text = format!(
            "[mysqld]\n\
             user=mysql\n\
             bind-address=127.0.0.1\n\
             skip-name-resolve\n\
             port={port}\n\
             datadir={data}\n\
             socket={dir}/sock\n\
             pid-file={dir}/pid\n\
             log-error={dir}/error.log\n\
             binlog_format=ROW\n\
             default_storage_engine=InnoDB\n\
             innodb_autoinc_lock_mode=2\n\
             innodb_buffer_pool_size=64M\n\
             innodb_log_file_size=48M\n\
             innodb_flush_log_at_trx_commit=0\n\
             max_connections=300\n\
             wsrep_on=ON\n\
             wsrep_provider={PROVIDER}\n\
             wsrep_cluster_name={cluster}\n\
             wsrep_cluster_address=gcomm://{peers}\n\
             wsrep_node_name={name}\n\
             wsrep_node_address=127.0.0.1:{galera}\n\
             wsrep_node_incoming_address=127.0.0.1:{port}\n\
             wsrep_sst_receive_address=127.0.0.1:{sst}\n\
             wsrep_sst_method=rsync\n\
             wsrep_slave_threads=2\n\
             wsrep_provider_options=\"gmcast.listen_addr=tcp://127.0.0.1:{galera};ist.recv_addr=127.0.0.1:{ist};gcache.size=128M;evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;evs.install_timeout=PT6S\"\n",
            port = self.port,
            data = self.data().display(),
            dir = self.dir.display(),
            name = self.name,
            galera = self.galera_port,
            ist = self.ist_port,
            sst = self.sst_port,
        );
        std::fs::write(self.config_file(), text).expect("write the node's my.cnf");
    }

    fn install(&self) {
        let status = Command::new("mariadb-install-db")
            .arg(format!("--defaults-file={}", self.config_file().display()))
            .args(["--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", self.data().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb-install-db runs (is mariadb-server installed?)");
        assert!(status.success(), "mariadb-install-db failed in {}", self.dir.display());
    }

    /// The node runs as `mysql`, not root: rsync's SST runs an rsync daemon as the server's user,
    /// and a daemon started by root switches to `nobody`, which cannot write the data directory.
    fn own(&self) {
        let status = Command::new("chown").args(["-R", "mysql:mysql"]).arg(&self.dir).status();
        assert!(status.is_ok_and(|s| s.success()), "chown -R mysql {} (the tests run as root)", self.dir.display());
    }

    /// The position the node's InnoDB committed up to, as `uuid:seqno`, if it can be recovered
    /// (`mariadbd --wsrep-recover`); a killed node left `seqno: -1` in its `grastate.dat`.
    fn recover_position(&self) -> Option<String> {
        let log = self.dir.join("recover.log");
        let _ = std::fs::remove_file(&log);
        let status = Command::new("mariadbd")
            .arg(format!("--defaults-file={}", self.config_file().display()))
            .arg("--wsrep-recover")
            .arg(format!("--log-error={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        let text = std::fs::read_to_string(&log).ok()?;
        let line = text.lines().rev().find(|l| l.contains("WSREP: Recovered position:"))?;
        let position = line.rsplit("Recovered position:").next()?.trim().to_string();
        (!position.ends_with(":-1")).then_some(position)
    }

    fn spawn(&mut self, extra: &[String]) {
        let child = Command::new("mariadbd")
            .arg(format!("--defaults-file={}", self.config_file().display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd with wsrep");
        self.child = Some(child);
    }

    /// Whether the process still runs.
    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn halt(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of the node's error log, for a failure's message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

/// How a node that was down catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejoin {
    /// Incremental state transfer from a donor's gcache: its own data kept, its position
    /// recovered first.
    Ist,
    /// Its data directory wiped: a full state snapshot transfer (rsync) from a donor.
    Sst,
}

/// The cluster and its proxy.
pub struct GaleraCluster {
    pub nodes: Vec<GaleraNode>,
    /// HAProxy's SQL port.
    pub proxy_port: u16,
    /// HAProxy's stats socket: `show stat` says which server it routes to.
    dir: PathBuf,
    proxy: Option<Child>,
}

impl GaleraCluster {
    /// Three nodes, the first bootstrapping, the others joining it by SST; then HAProxy. Waits
    /// until every node is Synced and the proxy takes connections.
    pub async fn start() -> GaleraCluster {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let dir = std::env::temp_dir().join(format!("automation-galera-{id}"));
        std::fs::create_dir_all(&dir).expect("Galera cluster directory");
        assert!(Path::new(PROVIDER).exists(), "{PROVIDER} is missing: apt-get install -y galera-4 rsync");
        let mut nodes: Vec<GaleraNode> = (1..=3)
            .map(|n| {
                let node_dir = dir.join(format!("node{n}"));
                std::fs::create_dir_all(&node_dir).expect("node directory");
                GaleraNode {
                    name: format!("node{n}"),
                    port: free_port(),
                    galera_port: free_port(),
                    ist_port: free_port(),
                    sst_port: free_port(),
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        let peers = nodes.iter().map(|n| format!("127.0.0.1:{}", n.galera_port)).collect::<Vec<_>>().join(",");
        let cluster_name = format!("automation-{id}");
        for (n, node) in nodes.iter().enumerate() {
            node.write_config(&cluster_name, &peers);
            // The joiners start empty: their first state transfer brings everything.
            if n == 0 {
                node.install();
            } else {
                std::fs::create_dir_all(node.data()).expect("an empty data directory");
            }
            node.own();
        }
        let mut cluster = GaleraCluster { nodes: Vec::new(), proxy_port: free_port(), dir, proxy: None };
        nodes[0].spawn(&["--wsrep-new-cluster".to_string()]);
        cluster.nodes = nodes;
        cluster.wait_synced(0, Duration::from_secs(60)).await;
        // Joiners one at a time: each takes an SST from a donor.
        for n in 1..3 {
            cluster.nodes[n].spawn(&[]);
            cluster.wait_synced(n, Duration::from_secs(120)).await;
        }
        cluster.start_proxy();
        cluster.wait_proxy(Duration::from_secs(30)).await;
        cluster
    }

    /// HAProxy's URL, `mysql://root@127.0.0.1:<port>`, without a database.
    pub fn proxy_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.proxy_port)
    }

    /// Node `n`'s own URL (bypassing the proxy).
    pub fn node_url(&self, n: usize) -> String {
        self.nodes[n].url()
    }

    fn start_proxy(&mut self) {
        let check = self.dir.join("check-synced.sh");
        // HAProxy runs it as `<proxy addr> <proxy port> <server addr> <server port>`.
        std::fs::write(
            &check,
            "#!/bin/sh\n\
             # Passes only a Galera node that is Synced (wsrep_local_state 4) and ready.\n\
             state=$(mariadb --no-defaults --connect-timeout=2 -h \"$3\" -P \"$4\" -uroot -N -B -e \
             \"select concat((select variable_value from information_schema.global_status where variable_name = 'WSREP_LOCAL_STATE'), '/', \
             (select variable_value from information_schema.global_status where variable_name = 'WSREP_READY'))\" 2>/dev/null)\n\
             [ \"$state\" = \"4/ON\" ]\n",
        )
        .expect("write the health check");
        let _ = Command::new("chmod").arg("+x").arg(&check).status();
        let servers = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let backup = if i == 0 { "" } else { " backup" };
                format!(
                    "    server {} 127.0.0.1:{} check inter 500 fall 2 rise 2 on-marked-down shutdown-sessions on-marked-up shutdown-backup-sessions{backup}\n",
                    n.name, n.port
                )
            })
            .collect::<String>();
        let text = format!(
            "global\n\
             \x20   insecure-fork-wanted\n\
             \x20   external-check\n\
             \x20   stats socket {dir}/haproxy.sock mode 600 level admin\n\
             \x20   log stderr format raw local0 notice\n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   log global\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 1h\n\
             \x20   timeout server 1h\n\
             \x20   timeout check 3s\n\
             \x20   retries 3\n\
             \x20   option redispatch\n\
             listen galera\n\
             \x20   bind 127.0.0.1:{port}\n\
             \x20   option external-check\n\
             \x20   external-check path \"/usr/bin:/bin\"\n\
             \x20   external-check command {check}\n\
             {servers}",
            dir = self.dir.display(),
            port = self.proxy_port,
            check = check.display(),
        );
        let config = self.dir.join("haproxy.cfg");
        std::fs::write(&config, text).expect("write haproxy.cfg");
        let log = std::fs::File::create(self.dir.join("haproxy.log")).expect("haproxy log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("haproxy starts (apt-get install -y haproxy)");
        self.proxy = Some(child);
    }

    async fn wait_proxy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(pool) = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(2))
                .connect(&self.proxy_url())
                .await
            {
                let ok = sqlx::query("select 1").execute(&pool).await.is_ok();
                pool.close().await;
                if ok {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "HAProxy did not route to a Synced node within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Node `n`'s `wsrep_local_state_comment` (`Synced`, `Donor/Desynced`, `Joining`, ...), or
    /// `None` when it does not answer.
    pub async fn node_state(&self, n: usize) -> Option<String> {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&self.node_url(n))
            .await
            .ok()?;
        let state: Option<String> = sqlx::query_scalar(
            "select variable_value from information_schema.global_status where variable_name = 'WSREP_LOCAL_STATE_COMMENT'",
        )
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten();
        pool.close().await;
        state
    }

    /// How many nodes the primary component has, as node `n` sees it.
    pub async fn cluster_size(&self, n: usize) -> Option<u32> {
        let pool = sqlx::mysql::MySqlPoolOptions::new().max_connections(1).connect(&self.node_url(n)).await.ok()?;
        let size: Option<String> = sqlx::query_scalar(
            "select variable_value from information_schema.global_status where variable_name = 'WSREP_CLUSTER_SIZE'",
        )
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten();
        pool.close().await;
        size.and_then(|s| s.parse().ok())
    }

    /// Waits until node `n` is Synced.
    pub async fn wait_synced(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.node_state(n).await.as_deref() == Some("Synced") {
                return;
            }
            assert!(
                self.nodes[n].running(),
                "Galera {} exited before it was Synced:\n{}",
                self.nodes[n].name,
                self.nodes[n].log_tail()
            );
            assert!(
                Instant::now() < deadline,
                "Galera {} was not Synced within {timeout:?}:\n{}",
                self.nodes[n].name,
                self.nodes[n].log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL node `n`, as a crashed host would leave it.
    pub fn kill(&mut self, n: usize) {
        self.nodes[n].halt();
    }

    /// Brings node `n` back into the cluster and waits until it is Synced; returns how it caught
    /// up and how long that took from the start (`Rejoin::Ist` falls back to an SST when its
    /// position cannot be recovered or the donor's gcache no longer has it).
    pub async fn rejoin(&mut self, n: usize, how: Rejoin) -> Duration {
        let started = Instant::now();
        let node = &mut self.nodes[n];
        node.halt();
        let mut extra = Vec::new();
        match how {
            Rejoin::Ist => {
                if let Some(position) = node.recover_position() {
                    extra.push(format!("--wsrep_start_position={position}"));
                }
            }
            Rejoin::Sst => {
                let _ = std::fs::remove_dir_all(node.data());
                std::fs::create_dir_all(node.data()).expect("an empty data directory");
                node.own();
            }
        }
        node.spawn(&extra);
        self.wait_synced(n, Duration::from_secs(180)).await;
        started.elapsed()
    }

    /// Whether node `n`'s last start caught up by IST (its error log says so).
    pub fn joined_by_ist(&self, n: usize) -> bool {
        let text = std::fs::read_to_string(self.nodes[n].dir.join("error.log")).unwrap_or_default();
        let last_start = text.rfind("Starting MariaDB").map_or(text.as_str(), |at| &text[at..]);
        last_start.contains("IST received") || last_start.contains("Receiving IST")
    }

    /// HAProxy's view of its servers: `(name, status)` with status `UP`, `DOWN`, ...
    pub fn proxy_status(&self) -> Vec<(String, String)> {
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!("echo 'show stat' | socat stdio unix-connect:{}/haproxy.sock", self.dir.display()))
            .output();
        let Ok(output) = output else {
            return Vec::new();
        };
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.starts_with("galera,") && !l.contains("FRONTEND") && !l.contains("BACKEND"))
            .filter_map(|l| {
                let fields: Vec<&str> = l.split(',').collect();
                Some((fields.get(1)?.to_string(), fields.get(17)?.to_string()))
            })
            .collect()
    }

    /// The error log tails of every node and HAProxy's log, for a failure's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!("--- {} ---\n{}\n", node.name, node.log_tail()));
        }
        out.push_str(&format!(
            "--- haproxy ---\n{}\n",
            std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
        ));
        out
    }
}

impl Drop for GaleraCluster {
    fn drop(&mut self) {
        if let Some(mut proxy) = self.proxy.take() {
            let _ = proxy.kill();
            let _ = proxy.wait();
        }
        for node in &mut self.nodes {
            node.halt();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

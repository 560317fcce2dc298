//! A RabbitMQ cluster of the test's own: three nodes on 127.0.0.1, each with its own node name,
//! AMQP and distribution ports and data directory, one Erlang cookie in a home of their own, and
//! `rabbitmqctl join_cluster` to make them one cluster. A test can SIGKILL a node, stop it
//! gracefully, start it again with its data, and ask which node leads a quorum queue. Every
//! node is killed and every directory removed on Drop, also when the test fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::private_rabbitmq::free_port;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const QUEUES: &str = "/usr/lib/rabbitmq/bin/rabbitmq-queues";

/// One node of the cluster.
pub struct ClusterNode {
    /// `t<id><letter>@localhost`.
    pub name: String,
    pub port: u16,
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct RabbitMqCluster {
    pub nodes: Vec<ClusterNode>,
    /// HOME of every node and of the CLI calls: the cluster's Erlang cookie.
    home: PathBuf,
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

impl RabbitMqCluster {
    /// Starts `size` nodes, joins them into one cluster and waits until every node takes AMQP
    /// connections.
    pub async fn start(size: usize) -> RabbitMqCluster {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let home = std::env::temp_dir().join(format!("automation-rabbitmq-cluster-{id}"));
        std::fs::create_dir_all(&home).expect("cluster directory");
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string().to_uppercase()).expect("cookie");
        set_owner_only(&cookie);
        let nodes = (0..size)
            .map(|index| {
                let letter = char::from(b'a' + u8::try_from(index).expect("fewer than 26 nodes"));
                let dir = home.join(letter.to_string());
                std::fs::create_dir_all(&dir).expect("node directory");
                let port = free_port();
                std::fs::write(dir.join("rabbitmq.conf"), format!("listeners.tcp.local = 127.0.0.1:{port}\n"))
                    .expect("config");
                std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env config");
                std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins");
                ClusterNode { name: format!("t{id}{letter}@localhost"), port, dist_port: free_port(), dir, child: None }
            })
            .collect();
        let mut cluster = RabbitMqCluster { nodes, home };
        for index in 0..size {
            cluster.launch(index);
        }
        for index in 0..size {
            cluster.wait_amqp(index).await;
        }
        let first = cluster.nodes[0].name.clone();
        for index in 1..size {
            let name = cluster.nodes[index].name.clone();
            cluster.ctl_ok(&name, &["stop_app"]).await;
            cluster.ctl_ok(&name, &["join_cluster", &first]).await;
            cluster.ctl_ok(&name, &["start_app"]).await;
            cluster.wait_amqp(index).await;
        }
        cluster
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` of every node, comma-separated, in node order.
    pub fn url(&self) -> String {
        self.url_with_first(None)
    }

    /// The same list with `dead` (a port nobody listens on) first, if given.
    pub fn url_with_first(&self, dead: Option<u16>) -> String {
        dead.into_iter()
            .chain(self.nodes.iter().map(|n| n.port))
            .map(|port| format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URL of one node alone.
    pub fn node_url(&self, index: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[index].port)
    }

    fn launch(&mut self, index: usize) {
        let node = &self.nodes[index];
        let _ = std::fs::remove_file(node.pid_file());
        let child = Command::new(SERVER)
            .env("HOME", &self.home)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", node.port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", node.dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", node.dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", node.pid_file())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a RabbitMQ node (is rabbitmq-server installed?)");
        self.nodes[index].child = Some(child);
    }

    /// Waits until node `index` completes an AMQP handshake (its port opens while it boots).
    async fn wait_amqp(&self, index: usize) {
        let node = &self.nodes[index];
        let deadline = Instant::now() + Duration::from_secs(90);
        let addresses = super::addresses(&self.node_url(index));
        loop {
            if answers(node.port)
                && let Ok(connection) = crate::messaging::connect_once(&addresses, "automation-tests-probe").await
            {
                let _ = connection.close(200, "ready".into()).await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} took no AMQP connection within 90 s (logs in {})",
                node.name,
                node.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `rabbitmqctl` (or another CLI of RabbitMQ's) against `node`: (success, output).
    async fn cli(&self, program: &'static str, node: &str, args: &[&str]) -> (bool, String) {
        let mut command = Command::new(program);
        command.env("HOME", &self.home).env("ERL_EPMD_ADDRESS", "127.0.0.1").args(["-n", node]).args(args);
        command.stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("joined")
            .expect("the RabbitMQ CLI runs");
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), said)
    }

    async fn ctl_ok(&self, node: &str, args: &[&str]) {
        let (ok, said) = self.cli(CTL, node, args).await;
        assert!(ok, "rabbitmqctl -n {node} {}: {said}", args.join(" "));
    }

    /// A running node to ask.
    fn any_running(&self) -> &ClusterNode {
        self.nodes.iter().find(|n| n.is_running()).expect("a running node")
    }

    /// The index of the node that leads quorum queue `queue`, as the cluster says.
    pub async fn leader_of(&self, queue: &str) -> Option<usize> {
        let asked = self.any_running().name.clone();
        let (ok, said) = self.cli(CTL, &asked, &["list_queues", "-q", "--no-table-headers", "name", "leader"]).await;
        if !ok {
            return None;
        }
        let leader = said.lines().find_map(|line| {
            let mut columns = line.split_whitespace();
            (columns.next()? == queue).then(|| columns.next().map(str::to_string))?
        })?;
        self.nodes.iter().position(|n| n.name == leader)
    }

    /// How many members quorum queue `queue` has (its replicas).
    pub async fn members_of(&self, queue: &str) -> usize {
        let asked = self.any_running().name.clone();
        let (ok, said) = self.cli(QUEUES, &asked, &["quorum_status", queue]).await;
        assert!(ok, "rabbitmq-queues quorum_status {queue}: {said}");
        self.nodes.iter().filter(|n| said.contains(&n.name)).count()
    }

    /// SIGKILL: the node dies as on a power cut, no goodbye to its peers or clients.
    pub fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let Ok(pid) = std::fs::read_to_string(node.pid_file()) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the node gracefully (`rabbitmqctl stop`), as a rolling restart does.
    pub async fn stop(&mut self, index: usize) {
        let name = self.nodes[index].name.clone();
        let _ = self.cli(CTL, &name, &["stop"]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while answers(self.nodes[index].port) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill(index);
    }

    /// Starts a stopped or killed node again, with its data (it rejoins the cluster), and waits
    /// until it takes AMQP connections.
    pub async fn restart(&mut self, index: usize) {
        self.launch(index);
        self.wait_amqp(index).await;
    }

    /// Waits until stopping node `index` would leave every quorum queue a majority (its
    /// followers caught up): what an operator checks before the next node of a rolling restart.
    pub async fn wait_not_quorum_critical(&self, index: usize, within: Duration) {
        let name = self.nodes[index].name.clone();
        let deadline = Instant::now() + within;
        loop {
            let (ok, said) = self.cli(QUEUES, &name, &["check_if_node_is_quorum_critical"]).await;
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "{name} is still quorum critical after {within:?}: {said}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn set_owner_only(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("cookie permissions");
}

impl Drop for RabbitMqCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

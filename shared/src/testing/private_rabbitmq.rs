//! A RabbitMQ node of the test's own, on its own ports and data directory, for tests that stop
//! or restart the broker without disturbing the tests beside them. Stopped and removed when
//! dropped, also when the test fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

pub struct PrivateRabbitMq {
    pub port: u16,
    dist_port: u16,
    node: String,
    dir: PathBuf,
    child: Option<Child>,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

impl PrivateRabbitMq {
    /// Starts a node and waits until it takes AMQP connections.
    pub async fn start() -> PrivateRabbitMq {
        PrivateRabbitMq::start_with_plugins(&[]).await
    }

    /// The same, with these plugins enabled (`rabbitmq_shovel`, ...; they ship with the server).
    pub async fn start_with_plugins(plugins: &[&str]) -> PrivateRabbitMq {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let dir = std::env::temp_dir().join(format!("automation-rabbitmq-{id}"));
        std::fs::create_dir_all(&dir).expect("private RabbitMQ directory");
        let mut node = PrivateRabbitMq {
            port: free_port(),
            dist_port: free_port(),
            node: format!("t{id}@localhost"),
            dir,
            child: None,
        };
        std::fs::write(node.dir.join("rabbitmq.conf"), format!("listeners.tcp.local = 127.0.0.1:{}\n", node.port))
            .expect("config");
        // The machine's rabbitmq-env.conf names the system node; this one names nothing.
        std::fs::write(node.dir.join("rabbitmq-env.conf"), "").expect("env config");
        std::fs::write(node.dir.join("enabled_plugins"), format!("[{}].\n", plugins.join(","))).expect("plugins");
        node.launch().await;
        node
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node's name, for `rabbitmqctl -n`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// SIGKILL to the Erlang VM itself (the server script runs it in the background, so killing
    /// the script would leave it running): as a lost machine or region would. Drop still cleans up.
    pub async fn kill(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while answers(self.port) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn launch(&mut self) {
        let child = Command::new(SERVER)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a private RabbitMQ (is rabbitmq-server installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers(self.port) {
            assert!(
                Instant::now() < deadline,
                "the private RabbitMQ did not start within 60 s (logs in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The port opens while the node still boots, and a connection then gets no AMQP answer
        // a client can parse: wait for a whole AMQP handshake.
        loop {
            match crate::messaging::connect_once(&super::addresses(&self.url()), "automation-tests-probe").await {
                Ok(connection) => {
                    let _ = connection.close(200, "ready".into()).await;
                    return;
                }
                Err(error) => assert!(
                    Instant::now() < deadline,
                    "the private RabbitMQ took no AMQP connection within 60 s ({error}; logs in {})",
                    self.dir.display()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the node (as an outage would) and waits until its port is closed.
    pub async fn stop(&mut self) {
        self.halt();
        let deadline = Instant::now() + Duration::from_secs(30);
        while answers(self.port) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts it again, with its data.
    pub async fn restart(&mut self) {
        self.launch().await;
    }

    /// Raises (or clears) a memory alarm: the broker blocks every publishing connection, as it
    /// does when it runs out of memory.
    pub fn alarm(&self, on: bool) {
        let watermark = if on { "0" } else { "0.4" };
        let status = Command::new(CTL)
            .args(["-n", &self.node, "set_vm_memory_high_watermark", watermark])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl set_vm_memory_high_watermark {watermark} failed");
    }

    fn halt(&mut self) {
        let _ = Command::new(CTL).args(["-n", &self.node, "stop"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRabbitMq {
    fn drop(&mut self) {
        self.halt();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

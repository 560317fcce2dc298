//! A MariaDB server of the test's own, on its own port and data directory, for tests that stop
//! the database without disturbing the tests beside them. Stopped and removed when dropped, also
//! when the test fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::private_rabbitmq::free_port;

pub struct PrivateMariaDb {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Server options beyond the defaults (a replication test's `--server-id`, `--log-bin`, ...),
    /// given again on every restart.
    options: Vec<String>,
}

impl PrivateMariaDb {
    /// Creates a data directory and starts the server; waits until it takes connections.
    pub async fn start() -> PrivateMariaDb {
        PrivateMariaDb::start_with(&[]).await
    }

    /// The same, with these server options as well (`--server-id=2`, `--log-bin`, ...).
    pub async fn start_with(options: &[&str]) -> PrivateMariaDb {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let dir = std::env::temp_dir().join(format!("automation-mariadb-{id}"));
        std::fs::create_dir_all(&dir).expect("private MariaDB directory");
        let output = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", dir.join("data").display()))
            .stdin(Stdio::null())
            .output()
            .expect("mariadb-install-db runs (is mariadb-server installed?)");
        assert!(
            output.status.success(),
            "mariadb-install-db failed in {}: {}{}",
            dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let options = options.iter().map(|o| o.to_string()).collect();
        let mut server = PrivateMariaDb { port: free_port(), dir, child: None, options };
        server.launch().await;
        server
    }

    /// `mysql://root@127.0.0.1:<port>`, without a database.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let child = Command::new("mariadbd")
            .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1", "--skip-name-resolve"])
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .args(&self.options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a private mariadbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(200))
            .is_err()
        {
            assert!(Instant::now() < deadline, "the private MariaDB did not start within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server abruptly (as a crash or a killed pod would) and waits for it to be gone.
    pub async fn stop(&mut self) {
        self.halt();
    }

    /// Starts it again on the same data.
    pub async fn restart(&mut self) {
        self.launch().await;
    }

    fn halt(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        self.halt();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

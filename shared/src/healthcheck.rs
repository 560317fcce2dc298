//! The `healthcheck` subcommand of both binaries: one GET of the process's own probe over plain
//! TCP, for container runtimes that can only run a command (a distroless image has no curl).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::{Component, Config};

/// The subcommand: loads the configuration as the CLI does, asks `address_of` where this binary
/// listens, and GETs `path` there once. Exit 0 on a 2xx answer, 1 otherwise, the reason on
/// stderr (the runtime's health log).
pub fn run(address_of: impl FnOnce(&Config) -> Result<SocketAddr, String>, path: &str, timeout: Duration) -> ExitCode {
    let address = match Config::load(Component::Cli).map_err(|e| e.to_string()).and_then(|c| address_of(&c)) {
        Ok(address) => address,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    match check(address, path, timeout) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("unhealthy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The address to probe for a server listening on `host:port`: a wildcard listener answers on
/// loopback, which needs no route and no name resolution.
pub fn target(host: IpAddr, port: u16) -> SocketAddr {
    let host = match host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(host, port)
}

/// GETs `path` on `address` and succeeds on a 2xx status line, all within `timeout`. The error
/// says what failed, for the runtime's health log.
pub fn check(address: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("could not connect to {address}: {e}"))?;
    stream.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: healthcheck\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("could not send to {address}: {e}"))?;
    // The status line is all we need: read until its end, within the deadline.
    let mut head = Vec::with_capacity(128);
    let mut buffer = [0u8; 128];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        stream.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
            Err(e) => return Err(format!("no answer from {address}{path}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("{address}{path} answered something that is not HTTP: {line:?}"))?;
    if (200..300).contains(&status) { Ok(status) } else { Err(format!("{address}{path} answered {status}")) }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A server that answers every connection with `answer`, on a thread.
    fn serve(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        address
    }

    #[test]
    fn a_2xx_answer_is_healthy() {
        let address = serve("HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}");
        assert_eq!(check(address, "/health", Duration::from_secs(2)), Ok(200));
    }

    #[test]
    fn a_503_answer_is_unhealthy_and_says_the_status() {
        let address = serve("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        let error = check(address, "/readiness", Duration::from_secs(2)).expect_err("unhealthy");
        assert!(error.contains("503"), "{error}");
    }

    #[test]
    fn nothing_listening_is_unhealthy() {
        let address = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
        let error = check(address, "/health", Duration::from_secs(2)).expect_err("unhealthy");
        assert!(error.contains("could not connect"), "{error}");
    }

    #[test]
    fn a_server_that_never_answers_is_unhealthy_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let started = Instant::now();
        let error = check(address, "/health", Duration::from_millis(300)).expect_err("unhealthy");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(error.contains("no answer"), "{error}");
        drop(listener);
    }

    #[test]
    fn a_wildcard_listener_is_probed_on_loopback() {
        assert_eq!(target("0.0.0.0".parse().expect("ip"), 8000).to_string(), "127.0.0.1:8000");
        assert_eq!(target("::".parse().expect("ip"), 8001).to_string(), "[::1]:8001");
        assert_eq!(target("10.1.2.3".parse().expect("ip"), 8000).to_string(), "10.1.2.3:8000");
    }
}

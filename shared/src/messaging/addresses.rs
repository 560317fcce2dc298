//! `AMQP_URL` as a list of broker nodes (a RabbitMQ cluster), and the dialer every AMQP
//! connection of both binaries goes through: it tries the nodes in list order and, when the node
//! of a connection fails, goes on to the next one, for the first connection and for lapin's
//! recovery alike.
//!
//! Accepted forms (as Spring's `spring.rabbitmq.addresses`, comma-separated, blanks around the
//! commas ignored):
//! - one URL, as before: `amqp://user:password@host:5672/vhost`;
//! - several full URLs: `amqp://u:p@h1:5672/v,amqp://u:p@h2:5672/v`. They must agree on scheme,
//!   user, password, vhost and query options: a connection authenticates once and then moves
//!   between nodes, so every node must take the same credentials;
//! - after a first full URL, `host` or `host:port` (`[::1]:5672` for IPv6) for the other nodes:
//!   `amqp://u:p@h1:5672/v,h2:5672,h3`. They take the first URL's scheme, credentials, vhost and
//!   options; a missing port is the scheme's default (5672, or 5671 for `amqps`).
//!
//! A bad entry, an empty one (`a,,b`), a node listed twice or a first entry that is not a full
//! URL is an error naming the entry by its position, with any password shown as `***`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};

/// How long a TCP (and TLS) connection to one node may take before the dialer goes on to the
/// next: a node that is down refuses at once, a host that is gone (a partition, a dead VM) would
/// otherwise hold every attempt for the kernel's timeout of minutes.
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One broker node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What is wrong with one entry of `AMQP_URL`. Shows the entry with its password masked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {position} ({entry}): {problem}")]
pub struct AddressError {
    /// 1 for the first entry.
    pub position: usize,
    /// The entry, password masked.
    pub entry: String,
    pub problem: String,
}

/// The broker nodes of `AMQP_URL` with the credentials, vhost and options they share. Clones
/// share the node to start from: once one connection of a process found a node down, the next
/// one begins at the node that answered.
#[derive(Clone)]
pub struct Addresses {
    uri: AMQPUri,
    nodes: Arc<[Node]>,
    /// The node the last successful connection went to.
    preferred: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addresses").field("nodes", &self.describe()).finish_non_exhaustive()
    }
}

impl std::str::FromStr for Addresses {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Addresses, AddressError> {
        Addresses::parse(text)
    }
}

impl Addresses {
    /// Reads `AMQP_URL` (see the module's documentation for the forms).
    pub fn parse(text: &str) -> Result<Addresses, AddressError> {
        let entries: Vec<&str> = text.split(',').map(str::trim).collect();
        let fail = |position: usize, entry: &str, problem: &str| AddressError {
            position,
            entry: mask_password(entry),
            problem: problem.to_string(),
        };
        let first_entry = entries[0];
        if first_entry.is_empty() {
            return Err(fail(
                1,
                first_entry,
                "is empty; the first address is a full URL (amqp://user:password@host:5672/vhost)",
            ));
        }
        if !first_entry.contains("://") {
            return Err(fail(
                1,
                first_entry,
                "the first address must be a full URL (amqp://user:password@host:5672/vhost); host:port may follow it",
            ));
        }
        let first: AMQPUri = first_entry.parse().map_err(|error: String| {
            fail(
                1,
                first_entry,
                &format!("not an amqp:// or amqps:// URL (amqp://user:password@host:5672/vhost): {error}"),
            )
        })?;
        let mut nodes = vec![Node { host: first.authority.host.clone(), port: first.authority.port }];
        for (index, entry) in entries.iter().enumerate().skip(1) {
            let position = index + 1;
            if entry.is_empty() {
                return Err(fail(position, entry, "is empty (two commas in a row, or one at the end)"));
            }
            let node = if entry.contains("://") {
                let uri: AMQPUri = entry.parse().map_err(|error: String| {
                    fail(position, entry, &format!("not an amqp:// or amqps:// URL: {error}"))
                })?;
                if uri.scheme != first.scheme
                    || uri.authority.userinfo != first.authority.userinfo
                    || uri.vhost != first.vhost
                    || uri.query != first.query
                {
                    return Err(fail(
                        position,
                        entry,
                        "has another scheme, user, password, vhost or query than the first; the nodes of one cluster share them (or write host:port after the first URL)",
                    ));
                }
                Node { host: uri.authority.host, port: uri.authority.port }
            } else {
                node_of(entry, &first.scheme).map_err(|problem| fail(position, entry, &problem))?
            };
            if nodes.contains(&node) {
                return Err(fail(position, entry, &format!("names {node} a second time")));
            }
            nodes.push(node);
        }
        Ok(Addresses { uri: first, nodes: nodes.into(), preferred: Arc::default() })
    }

    /// The nodes, in the configured order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The user every connection authenticates as.
    pub fn user(&self) -> &str {
        &self.uri.authority.userinfo.username
    }

    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// The nodes and the vhost, without credentials: for log lines and errors.
    pub fn describe(&self) -> String {
        let nodes = self.nodes.iter().map(Node::to_string).collect::<Vec<_>>().join(",");
        if self.uri.vhost == "/" { nodes } else { format!("{nodes}/{}", self.uri.vhost) }
    }

    /// The URL lapin is given: the first's credentials, vhost and options; the dialer picks the
    /// node.
    pub(crate) fn uri(&self) -> AMQPUri {
        self.uri.clone()
    }

    /// The dialer of one connection: it starts at the node the last good connection used, and
    /// every later call (a failed attempt, or a connection that was lost) takes the next node.
    pub(crate) fn dialer(&self) -> Dialer {
        Dialer { addresses: self.clone(), last: Arc::new(std::sync::Mutex::new(None)) }
    }
}

/// Picks the node for each attempt of one connection and opens the TCP (or TLS) stream to it.
#[derive(Clone)]
pub(crate) struct Dialer {
    addresses: Addresses,
    /// The node of this connection's previous attempt.
    last: Arc<std::sync::Mutex<Option<usize>>>,
}

impl Dialer {
    fn next_node(&self) -> (usize, Option<usize>) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = self.addresses.nodes.len();
        let index = match *last {
            None => self.addresses.preferred.load(Ordering::Relaxed) % count,
            Some(previous) => (previous + 1) % count,
        };
        let previous = last.replace(index);
        (index, previous)
    }

    /// The target of the next attempt: lapin's URL pointed at the next node. lapin calls the
    /// dialer for the first connection and again for every recovery, with its own backoff
    /// between calls.
    pub(crate) fn target(&self, uri: AMQPUri) -> (usize, AMQPUri) {
        let (index, previous) = self.next_node();
        let node = &self.addresses.nodes[index];
        if let Some(previous) = previous
            && self.addresses.nodes.len() > 1
        {
            tracing::info!(broker.node = %node, broker.previous = %self.addresses.nodes[previous], "connecting to another RabbitMQ node");
        }
        let mut target = uri;
        target.authority.host.clone_from(&node.host);
        target.authority.port = node.port;
        (index, target)
    }

    /// Records how the attempt at node `index` went (bounded by [`NODE_CONNECT_TIMEOUT`]).
    pub(crate) fn settle<T>(
        &self,
        index: usize,
        attempt: Result<std::io::Result<T>, tokio::time::error::Elapsed>,
    ) -> lapin::Result<T> {
        let error = match attempt {
            Ok(Ok(stream)) => {
                self.addresses.preferred.store(index, Ordering::Relaxed);
                return Ok(stream);
            }
            Ok(Err(error)) => error,
            Err(_) => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TCP connection within {} s", NODE_CONNECT_TIMEOUT.as_secs()),
            ),
        };
        // The next connection of this process begins past the node that failed.
        let _ = self.addresses.preferred.compare_exchange(
            index,
            (index + 1) % self.addresses.nodes.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        tracing::warn!(broker.node = %self.addresses.nodes[index], %error, "a RabbitMQ node is not reachable");
        Err(lapin::Error::from(error))
    }
}

/// Opens a connection to the first node of `addresses` that takes it; with `properties` that
/// enable recovery, lapin's recovery goes through the same dialer and so to the next node.
pub(crate) async fn open(
    addresses: &Addresses,
    properties: lapin::ConnectionProperties,
) -> lapin::Result<lapin::Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    let dialer = addresses.dialer();
    lapin::Connection::connector(
        addresses.uri(),
        runtime,
        async move |uri, runtime| {
            let (index, target) = dialer.target(uri);
            let tls = OwnedTLSConfig::default();
            let attempt =
                tokio::time::timeout(NODE_CONNECT_TIMEOUT, target.connect_with_config_async(tls.as_ref(), &runtime))
                    .await;
            dialer.settle(index, attempt)
        },
        properties,
    )
    .await
}

/// `host`, `host:port` or `[v6]:port` after the first URL.
fn node_of(entry: &str, scheme: &AMQPScheme) -> Result<Node, String> {
    let default_port = match scheme {
        AMQPScheme::AMQP => 5672,
        AMQPScheme::AMQPS => 5671,
    };
    if entry.contains('@') {
        return Err("has credentials without a scheme: write a full URL, or host:port after the first URL".into());
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("an IPv6 address needs its closing ']'")?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("after ']' comes ':port'")?)),
        }
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err("not a host or host:port (write a full URL, or host:port after the first URL)".into());
    }
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err("its port is not a number from 1 to 65535".into()),
        },
    };
    Ok(Node { host: host.to_string(), port })
}

/// The entry with the password between `user:` and `@` replaced by `***`.
pub fn mask_password(entry: &str) -> String {
    let Some((scheme, rest)) = entry.split_once("://") else {
        // host:port has no credentials; anything with an '@' might.
        return match entry.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => entry.to_string(),
        };
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => entry.to_string(),
        },
        None => entry.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(text: &str) -> Vec<String> {
        Addresses::parse(text).expect("valid").nodes().iter().map(Node::to_string).collect()
    }

    #[test]
    fn one_url_is_one_node_as_before() {
        let addresses = Addresses::parse("amqp://u:secret@mq:5673/%2f").expect("valid");
        assert_eq!(nodes("amqp://u:secret@mq:5673/%2f"), ["mq:5673"]);
        assert_eq!(addresses.user(), "u");
        assert_eq!(addresses.vhost(), "/");
        assert_eq!(addresses.describe(), "mq:5673");
    }

    #[test]
    fn full_urls_and_host_port_shorthand_make_a_list_in_order() {
        assert_eq!(
            nodes("amqp://u:p@h1:5672/app, amqp://u:p@h2:5673/app ,h3:5674,h4,[::1]:5675,[::2]"),
            ["h1:5672", "h2:5673", "h3:5674", "h4:5672", "[::1]:5675", "[::2]:5672"]
        );
        assert_eq!(nodes("amqps://u:p@h1/app,h2"), ["h1:5671", "h2:5671"]);
        let addresses = Addresses::parse("amqp://u:p@h1:5672/app,h2:5673").expect("valid");
        assert_eq!(addresses.describe(), "h1:5672,h2:5673/app");
        assert!(!format!("{addresses:?}").contains(":p@"), "{addresses:?}");
    }

    #[test]
    fn a_bad_entry_names_its_position_and_never_the_password() {
        let cases = [
            ("", 1, "is empty"),
            ("h1:5672,h2:5672", 1, "must be a full URL"),
            ("http://u:secret@h1/", 1, "not an amqp"),
            ("amqp://u:secret@h1:5672/%2f,,h2", 2, "is empty"),
            ("amqp://u:secret@h1:5672/%2f,h2,", 3, "is empty"),
            ("amqp://u:secret@h1:5672/%2f,h2:99999", 2, "not a number from 1 to 65535"),
            ("amqp://u:secret@h1:5672/%2f,h2:", 2, "not a number from 1 to 65535"),
            ("amqp://u:secret@h1:5672/%2f,u:secret@h2", 2, "credentials without a scheme"),
            ("amqp://u:secret@h1:5672/%2f,amqp://u:other@h2:5672/%2f", 2, "another scheme, user, password"),
            ("amqp://u:secret@h1:5672/%2f,amqp://u:secret@h2:5672/other", 2, "another scheme, user, password"),
            ("amqp://u:secret@h1:5672/%2f,amqps://u:secret@h2:5671/%2f", 2, "another scheme"),
            ("amqp://u:secret@h1:5672/%2f,h1:5672", 2, "a second time"),
            ("amqp://u:secret@h1:5672/%2f,[::1", 2, "closing"),
            ("amqp://u:secret@h1:5672/%2f,h2/vhost", 2, "not a host"),
        ];
        for (text, position, problem) in cases {
            let error = Addresses::parse(text).expect_err(text);
            assert_eq!(error.position, position, "{text}: {error}");
            assert!(error.to_string().contains(problem), "{text}: {error}");
            assert!(!error.to_string().contains("secret"), "{text}: {error}");
        }
    }

    #[test]
    fn passwords_are_masked_in_every_shape() {
        assert_eq!(mask_password("amqp://u:secret@h:5672/v"), "amqp://u:***@h:5672/v");
        assert_eq!(mask_password("amqp://u:se@cret@h:5672/v"), "amqp://u:***@h:5672/v");
        assert_eq!(mask_password("amqp://h:5672/v"), "amqp://h:5672/v");
        assert_eq!(mask_password("u:secret@h2"), "***@h2");
    }

    #[test]
    fn each_attempt_of_a_connection_takes_the_next_node_and_new_ones_start_where_the_last_succeeded() {
        let addresses = Addresses::parse("amqp://u:p@h1,h2,h3").expect("valid");
        let dialer = addresses.dialer();
        assert_eq!(dialer.next_node(), (0, None));
        assert_eq!(dialer.next_node(), (1, Some(0)));
        assert_eq!(dialer.next_node(), (2, Some(1)));
        assert_eq!(dialer.next_node(), (0, Some(2)));
        addresses.preferred.store(2, Ordering::Relaxed);
        assert_eq!(addresses.clone().dialer().next_node(), (2, None), "clones share where to start");
    }
}

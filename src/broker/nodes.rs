//! The RabbitMQ nodes to connect to. `amqp.url` names one node, or several
//! nodes of a cluster: a list of URLs, a comma-separated string of them, or
//! one URL with several hosts (`amqp://user:pass@h1:5672,h2:5672/%2f`).
//! Connecting tries them in turn and takes the first that answers; a worker
//! that loses its node starts with the next one, so it fails over to a
//! node that still holds the (replicated) queues.
//!
//! A node's URL carries the password: it is kept secret, and only the node's
//! `host:port` is logged, exported as a metric label or put in errors.

use super::BrokerError;
use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Roles of a worker's long-lived connections, whose (re)connects its log
/// reports at INFO. Other roles are commands' one-off connections
/// (`publisher`, `dlq list`, ...): plumbing, logged at DEBUG.
const WORKER_ROLES: [&str; 2] = ["worker", "webhooks"];

/// One node: its URL (secret) and `host:port`.
#[derive(Clone)]
pub struct Node {
    url: SecretString,
    addr: String,
}

impl Node {
    /// `host:port`, safe to log.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({})", self.addr)
    }
}

/// The nodes of `amqp.url`, in the order connecting tries them.
#[derive(Clone)]
pub struct Nodes {
    nodes: Vec<Node>,
    /// How long one node may take to accept a connection before the next is tried.
    pub connect_timeout: Duration,
}

impl fmt::Debug for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.nodes.iter().map(|n| &n.addr))
            .finish()
    }
}

/// `amqp.url` could not be read; names the entry, never its password.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    #[error("names no node")]
    Empty,
    #[error("entry {index} ({shown}) is not an AMQP URL: {reason}")]
    Invalid {
        index: usize,
        shown: String,
        reason: String,
    },
}

impl Nodes {
    /// Read `amqp.url` given as pieces: whole URLs, or the hosts of one
    /// multi-host URL split at its commas (`amqp://u:p@h1:5672`, `h2:5672/%2f`).
    pub fn parse<S: AsRef<str>>(pieces: &[S]) -> Result<Self, NodesError> {
        let pieces: Vec<&str> = pieces
            .iter()
            .flat_map(|p| p.as_ref().split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        // Groups: a URL and the bare hosts that follow it.
        let mut groups: Vec<Vec<&str>> = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            if piece.contains("://") {
                groups.push(vec![piece]);
            } else if let Some(group) = groups.last_mut() {
                group.push(piece);
            } else {
                return Err(NodesError::Invalid {
                    index: i,
                    shown: host_of(piece).to_owned(),
                    reason: "a host with no amqp:// URL before it".into(),
                });
            }
        }
        let mut nodes = Vec::new();
        for group in groups {
            nodes.extend(expand(&group));
        }
        if nodes.is_empty() {
            return Err(NodesError::Empty);
        }
        let nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(index, url)| node(index, url))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            nodes,
            connect_timeout: Duration::from_secs(5),
        })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// The same nodes in a random order, so that workers given the same list
    /// spread over the cluster.
    pub fn shuffled(mut self) -> Self {
        use rand::seq::SliceRandom;
        self.nodes.shuffle(&mut rand::rng());
        self
    }

    /// Connect to the first node that answers, starting at `start` and going
    /// round. Returns the connection and the index of its node.
    pub async fn connect_from(
        &self,
        start: usize,
        role: &str,
    ) -> Result<(Connection, usize), BrokerError> {
        let n = self.nodes.len();
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let node = &self.nodes[i];
            let props = ConnectionProperties::default()
                .with_connection_name(format!("outreach {role} pid {}", std::process::id()).into());
            let attempt = tokio::time::timeout(
                self.connect_timeout,
                Connection::connect(node.url.expose_secret(), props),
            )
            .await;
            match attempt {
                Ok(Ok(conn)) => {
                    if WORKER_ROLES.contains(&role) {
                        tracing::info!(node = %node.addr, role, "connected to RabbitMQ");
                    } else {
                        tracing::debug!(node = %node.addr, role, "connected to RabbitMQ");
                    }
                    return Ok((conn, i));
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %node.addr, role, error = %e, "RabbitMQ node does not answer");
                    last = Some(e.to_string());
                }
                Err(_) => {
                    tracing::warn!(node = %node.addr, role, timeout_ms = self.connect_timeout.as_millis() as u64,
                        "RabbitMQ node did not accept the connection in time");
                    last = Some(format!(
                        "no answer within {} ms",
                        self.connect_timeout.as_millis()
                    ));
                }
            }
        }
        Err(BrokerError::Connect {
            nodes: format!("{self:?}"),
            last: last.unwrap_or_default(),
        })
    }

    /// Every node's URL, comma-separated, credentials included: only for
    /// handing the setting to a child process (`OUTREACH__AMQP__URL`).
    pub fn expose_urls(&self) -> String {
        let urls: Vec<&str> = self.nodes.iter().map(|n| n.url.expose_secret()).collect();
        urls.join(",")
    }

    /// The node at `index` (as returned by [`Self::connect_from`]).
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }
}

impl FromStr for Nodes {
    type Err = NodesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(&[s])
    }
}

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let pieces = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        Nodes::parse(&pieces).map_err(serde::de::Error::custom)
    }
}

/// A group's URLs: the first URL as it is when alone, else one URL per host,
/// each with the first piece's scheme and credentials and the last piece's
/// vhost and query.
fn expand(group: &[&str]) -> Vec<String> {
    if group.len() == 1 {
        return vec![group[0].to_owned()];
    }
    let first = group[0];
    let scheme_end = first.find("://").map(|i| i + 3).unwrap_or(0);
    let (head, first_rest) = first.split_at(scheme_end);
    let (userinfo, first_rest) = match first_rest.find('@') {
        Some(at) => first_rest.split_at(at + 1),
        None => ("", first_rest),
    };
    let hosts = std::iter::once(first_rest).chain(group[1..].iter().copied());
    let mut tail = "";
    let mut bare = Vec::new();
    for piece in hosts {
        let end = piece.find(['/', '?']).unwrap_or(piece.len());
        let (host, rest) = piece.split_at(end);
        if !rest.is_empty() {
            tail = rest;
        }
        bare.push(host);
    }
    bare.into_iter()
        .map(|host| format!("{head}{userinfo}{host}{tail}"))
        .collect()
}

fn node(index: usize, url: String) -> Result<Node, NodesError> {
    let shown = host_of(&url).to_owned();
    let parsed = lapin::uri::AMQPUri::from_str(&url).map_err(|reason| NodesError::Invalid {
        index,
        shown: shown.clone(),
        // The parser's message quotes no part of the URL we are not showing.
        reason: scrub(&reason, &url),
    })?;
    let addr = format!("{}:{}", parsed.authority.host, parsed.authority.port);
    Ok(Node {
        url: SecretString::from(url),
        addr,
    })
}

/// The host part of a URL or bare host, without credentials, vhost or query.
fn host_of(piece: &str) -> &str {
    let rest = piece.split_once("://").map_or(piece, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    &rest[..end]
}

/// The parser's message with the URL's credentials taken out, in case it quotes them.
fn scrub(reason: &str, url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.rsplit_once('@') {
        Some((userinfo, _)) if !userinfo.is_empty() => reason.replace(userinfo, "***"),
        _ => reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: &Nodes) -> Vec<&str> {
        n.iter().map(Node::addr).collect()
    }

    #[test]
    fn one_url_is_one_node() {
        let n: Nodes = "amqp://guest:guest@127.0.0.1:5672/%2f".parse().unwrap();
        assert_eq!(addrs(&n), ["127.0.0.1:5672"]);
    }

    #[test]
    fn a_list_of_urls_is_a_node_each_in_order() {
        let n = Nodes::parse(&[
            "amqp://u:p@10.0.0.1:5672/%2f",
            "amqp://u:p@10.0.0.2:5673/%2f",
        ])
        .unwrap();
        assert_eq!(addrs(&n), ["10.0.0.1:5672", "10.0.0.2:5673"]);
    }

    #[test]
    fn a_comma_separated_string_of_urls_is_read_like_a_list() {
        let n: Nodes = "amqp://u:p@a:5672/%2f, amqp://u:p@b:5672/%2f"
            .parse()
            .unwrap();
        assert_eq!(addrs(&n), ["a:5672", "b:5672"]);
    }

    #[test]
    fn a_multi_host_url_gives_each_host_the_credentials_and_vhost() {
        let n: Nodes = "amqp://u:p@a:5681,b:5682,c/vh?heartbeat=10"
            .parse()
            .unwrap();
        assert_eq!(addrs(&n), ["a:5681", "b:5682", "c:5672"]);
        let urls: Vec<_> = n.iter().map(|n| n.url.expose_secret().to_owned()).collect();
        assert_eq!(
            urls,
            [
                "amqp://u:p@a:5681/vh?heartbeat=10",
                "amqp://u:p@b:5682/vh?heartbeat=10",
                "amqp://u:p@c/vh?heartbeat=10"
            ]
        );
    }

    #[test]
    fn a_bad_entry_is_named_by_its_place_and_host_never_its_password() {
        let err = Nodes::parse(&["amqp://u:p@a:5672/%2f", "amqp://u:hunter2@b:notaport/%2f"])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("entry 1 (b:notaport)"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(
            Nodes::parse::<&str>(&[]).unwrap_err().to_string(),
            "names no node"
        );
    }

    #[test]
    fn debug_output_shows_hosts_only() {
        let n: Nodes = "amqp://admin:s3cret@a:5672/%2f".parse().unwrap();
        let shown = format!("{n:?} {:?}", n.node(0));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("a:5672"), "{shown}");
    }

    #[test]
    fn shuffling_keeps_every_node() {
        let n: Nodes = "amqp://u:p@a,b,c,d,e/%2f".parse().unwrap();
        let mut got: Vec<String> = n.shuffled().iter().map(|n| n.addr.clone()).collect();
        got.sort();
        assert_eq!(got, ["a:5672", "b:5672", "c:5672", "d:5672", "e:5672"]);
    }
}

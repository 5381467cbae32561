//! `[amqp]` settings (documented in `config/default.toml`).

use crate::enum_names::by_name;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// One node or several (a cluster); see [`super::Nodes`].
    pub url: super::Nodes,
    /// Try the nodes in a random order per process (workers spread over the
    /// cluster) rather than as listed.
    pub shuffle_nodes: bool,
    /// How long one node may take to accept a connection before the next is tried.
    pub connect_timeout_ms: u64,
    pub prefix: String,
    #[serde(deserialize_with = "by_name")]
    pub queue_type: QueueType,
    pub prefetch: u16,
    pub work_queues: u16,
    pub delivery_limit: u32,
    /// How long the worker's liveness probe may go unanswered before its
    /// session is taken for hung (`/readyz` 503, next node).
    pub liveness_timeout_ms: u64,
}

impl AmqpSettings {
    /// The nodes in the order this process tries them (shuffled once per
    /// call when `shuffle_nodes` is on), with the connect timeout applied.
    pub fn nodes(&self) -> super::Nodes {
        let mut nodes = self.url.clone();
        nodes.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        if self.shuffle_nodes {
            nodes = nodes.shuffled();
        }
        nodes
    }
}

//! Publishing jobs, for upstream apps written in Rust, the CLI and tests.

use crate::broker::{self, BrokerError, Topology};
use crate::job::{self, Job, JobError};
use lapin::{Channel, Connection};

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("job refused: {0}")]
    Invalid(#[from] JobError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Publishes jobs to the jobs exchange with publisher confirms.
pub struct JobPublisher {
    _conn: Connection,
    channel: Channel,
    exchange: String,
}

impl JobPublisher {
    /// Connect and declare the topology (so jobs published before any worker
    /// started are kept).
    pub async fn connect(nodes: &broker::Nodes, topology: &Topology) -> Result<Self, BrokerError> {
        let conn = broker::connect(nodes, "publisher").await?;
        let channel = broker::confirm_channel(&conn).await?;
        topology.declare(&channel).await?;
        Ok(Self {
            _conn: conn,
            channel,
            exchange: topology.jobs_exchange.clone(),
        })
    }

    /// Validate, then publish.
    pub async fn publish(&self, payload: &[u8]) -> Result<Job, EnqueueError> {
        let job = Job::decode(payload)?;
        self.publish_raw(payload, Some(job.id.as_str())).await?;
        Ok(job)
    }

    /// Publish bytes as they are (for testing how workers treat bad input),
    /// routed by their `tenant_id` and `channel` fields when they can be read.
    pub async fn publish_raw(
        &self,
        payload: &[u8],
        message_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        let mut props = broker::job_properties();
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        broker::publish_confirmed(
            &self.channel,
            &self.exchange,
            &job::routing_key(payload),
            payload,
            props,
        )
        .await
    }

    /// Publish many without waiting for each confirm before sending the next.
    pub async fn publish_many(&self, payloads: &[Vec<u8>]) -> Result<(), BrokerError> {
        let mut confirms = Vec::with_capacity(payloads.len());
        for p in payloads {
            let c = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    job::routing_key(p).as_str().into(),
                    Default::default(),
                    p,
                    broker::job_properties(),
                )
                .await?;
            confirms.push(c);
        }
        for c in confirms {
            if c.await?.is_nack() {
                return Err(BrokerError::Nacked(self.exchange.clone()));
            }
        }
        Ok(())
    }
}

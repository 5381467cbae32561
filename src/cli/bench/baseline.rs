//! The broker-only baseline: the pipeline's RabbitMQ shape with nothing else.
//! Consume a job from the work queue (same prefetch, same message), publish
//! an event of similar size with a publisher confirm, ack. No database, no
//! provider. Whatever the pipeline adds on top is what it costs.

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicQosOptions};
use outreach::broker::{self, Topology};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One baseline consumer (one connection, like one worker process).
pub async fn consume(
    nodes: broker::Nodes,
    topology: Topology,
    prefetch: u16,
    concurrency: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let conn = broker::connect(&nodes, "bench-baseline").await?;
    let publish = broker::confirm_channel(&conn).await?;
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    // Every work queue, like the worker (one consumer each).
    let consumers = topology.consume_work(&consume, "bench-baseline").await?;
    let mut consumer = futures::stream::select_all(consumers);
    let slots = Arc::new(Semaphore::new(concurrency));
    let tracker = TaskTracker::new();
    let exchange: Arc<str> = topology.events_exchange.as_str().into();
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            d = consumer.next() => match d {
                Some(d) => d?,
                None => break,
            },
        };
        let permit = slots.clone().acquire_owned().await?;
        let (publish, exchange) = (publish.clone(), exchange.clone());
        tracker.spawn(async move {
            let body = event_for(&delivery.data);
            let props = broker::persistent_json();
            if broker::publish_confirmed(&publish, &exchange, "sent.email", &body, props)
                .await
                .is_ok()
            {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

/// An event shaped and sized like the pipeline's, echoing the job's metadata
/// (the collector needs it to count the job and time it).
fn event_for(job: &[u8]) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Meta {
        job_id: Option<String>,
        tenant_id: Option<String>,
        metadata: Option<serde_json::Value>,
    }
    let m: Meta = serde_json::from_slice(job).unwrap_or(Meta {
        job_id: None,
        tenant_id: None,
        metadata: None,
    });
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::to_vec(&serde_json::json!({
        "version": 1, "event_id": uuid::Uuid::now_v7(), "job_id": m.job_id,
        "tenant_id": m.tenant_id, "channel": "email", "status": "sent", "provider": "sendgrid",
        "provider_message_id": uuid::Uuid::new_v4().simple().to_string(), "chain_step": 0,
        "fallback_used": false, "attempts": 1,
        "attempt_log": [{"provider": "sendgrid", "step": 0, "kind": null, "code": null, "at": now}],
        "metadata": m.metadata, "replayed": false, "occurred_at": now,
    }))
    .expect("json")
}

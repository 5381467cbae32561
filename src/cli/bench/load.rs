//! Load for the bench: job payloads (each carrying its index and enqueue time
//! in `metadata`), confirmed publishing (all at once or paced), the event
//! collector that sees every delivery event, and clean-up of a prefix.

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use outreach::broker::{self, Topology};
use outreach::enqueue::JobPublisher;
use serde::Deserialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// The channels bench jobs use.
pub const CHANNELS: [&str; 3] = ["email", "sms", "whatsapp"];

/// The channel of job `i`: half email, a quarter SMS, a quarter WhatsApp.
pub fn channel_of(i: usize) -> &'static str {
    match i % 4 {
        0 | 2 => "email",
        1 => "sms",
        _ => "whatsapp",
    }
}

/// Job `i` of run `run` for `tenant` on [`channel_of`]`(i)` (WhatsApp as
/// free text), about 400-600 bytes each.
pub fn payload(run: &str, i: usize, tenant: &str) -> Vec<u8> {
    let meta = serde_json::json!({"bench_i": i, "enq_us": now_us()});
    let job = match channel_of(i) {
        "email" => serde_json::json!({
            "job_id": format!("b-{run}-{i}"), "tenant_id": tenant, "channel": "email",
            "recipient": format!("patient{i}@example.com"),
            "content": {"subject": "Your appointment on Tuesday",
                        "text": "Dear patient, this is a reminder of your appointment on Tuesday at 10:00. Reply to reschedule.",
                        "html": "<p>Dear patient, this is a reminder of your appointment on <b>Tuesday at 10:00</b>. Reply to reschedule.</p>"},
            "metadata": meta}),
        "sms" => serde_json::json!({
            "job_id": format!("b-{run}-{i}"), "tenant_id": tenant, "channel": "sms",
            "recipient": format!("+1415555{:04}", i % 10_000),
            "content": {"text": "Reminder: your appointment is on Tuesday at 10:00. Reply STOP to opt out."},
            "metadata": meta}),
        _ => serde_json::json!({
            "job_id": format!("b-{run}-{i}"), "tenant_id": tenant, "channel": "whatsapp",
            "recipient": format!("+4477009{:05}", i % 100_000),
            "content": {"text": "Reminder: your appointment is on Tuesday at 10:00."},
            "metadata": meta}),
    };
    serde_json::to_vec(&job).expect("json")
}

/// Publish jobs `range` with `tenant_of(i)`, in confirmed chunks of 2,000,
/// as fast as the broker takes them. Calls `progress(n)` after each chunk.
pub async fn enqueue_all(
    publisher: &JobPublisher,
    run: &str,
    range: std::ops::Range<usize>,
    tenant_of: &(dyn Fn(usize) -> String + Sync),
    progress: &(dyn Fn(usize) + Sync),
) -> anyhow::Result<()> {
    let mut start = range.start;
    while start < range.end {
        let end = (start + 2_000).min(range.end);
        let chunk: Vec<Vec<u8>> = (start..end)
            .map(|i| payload(run, i, &tenant_of(i)))
            .collect();
        publisher.publish_many(&chunk).await?;
        progress(end - start);
        start = end;
    }
    Ok(())
}

/// Publish jobs `range` at `per_sec` (open loop: each 10 ms tick publishes
/// what is due, so a slow confirm does not lower the offered rate).
pub async fn enqueue_paced(
    publisher: &JobPublisher,
    run: &str,
    range: std::ops::Range<usize>,
    tenant_of: &(dyn Fn(usize) -> String + Sync),
    per_sec: f64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut next = range.start;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while next < range.end {
        tick.tick().await;
        let due = range.start + (started.elapsed().as_secs_f64() * per_sec) as usize;
        let end = due.min(range.end);
        if end > next {
            let chunk: Vec<Vec<u8>> = (next..end)
                .map(|i| payload(run, i, &tenant_of(i)))
                .collect();
            publisher.publish_many(&chunk).await?;
            next = end;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct EventView {
    status: String,
    metadata: Option<BenchMeta>,
}

#[derive(Deserialize)]
struct BenchMeta {
    bench_i: usize,
    enq_us: u64,
}

/// Per job index: when its final event arrived and its enqueue-to-final time.
#[derive(Default)]
pub struct Samples {
    /// Receive time (µs since epoch) of the first final event; 0 = not yet.
    pub done_at_us: Vec<u64>,
    /// Enqueue-to-final latency in µs.
    pub latency_us: Vec<u64>,
}

/// Consumes every event of a prefix (a private queue bound with `#`,
/// no-ack) and records the first final event of each job.
#[derive(Clone)]
pub struct Collector {
    samples: Arc<Mutex<Samples>>,
    events: Arc<AtomicUsize>,
}

impl Collector {
    /// Bind and start consuming; `capacity` is the number of job indices.
    /// Runs on the caller's runtime until the connection is closed.
    pub async fn start(
        nodes: &broker::Nodes,
        topology: &Topology,
        capacity: usize,
    ) -> anyhow::Result<(Collector, lapin::Connection)> {
        let conn = broker::connect(nodes, "bench-events").await?;
        let ch = conn.create_channel().await?;
        let q = format!("{}.bench-events", topology.events_exchange);
        // Exclusive and auto-delete: it goes away with the bench's connection.
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(q.as_str().into(), opts, FieldTable::default())
            .await?;
        ch.queue_bind(
            q.as_str().into(),
            topology.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "bench-collector".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let c = Collector {
            samples: Arc::new(Mutex::new(Samples {
                done_at_us: vec![0; capacity],
                latency_us: vec![0; capacity],
            })),
            events: Arc::new(AtomicUsize::new(0)),
        };
        let me = c.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                me.events.fetch_add(1, Ordering::Relaxed);
                me.observe(&d.data, now_us());
            }
        });
        Ok((c, conn))
    }

    fn observe(&self, body: &[u8], at_us: u64) {
        let Ok(ev) = serde_json::from_slice::<EventView>(body) else {
            return;
        };
        if !matches!(ev.status.as_str(), "sent" | "failed" | "expired") {
            return;
        }
        let Some(m) = ev.metadata else { return };
        let mut s = self.samples.lock().expect("not poisoned");
        if m.bench_i < s.done_at_us.len() && s.done_at_us[m.bench_i] == 0 {
            s.done_at_us[m.bench_i] = at_us;
            s.latency_us[m.bench_i] = at_us.saturating_sub(m.enq_us);
        }
    }

    /// Events seen so far (final or not, replays included).
    pub fn events(&self) -> usize {
        self.events.load(Ordering::Relaxed)
    }

    /// Jobs in `range` with a final event.
    pub fn finals_in(&self, range: std::ops::Range<usize>) -> usize {
        let s = self.samples.lock().expect("not poisoned");
        s.done_at_us[range].iter().filter(|t| **t != 0).count()
    }

    /// Completion times and latencies of jobs in `range` that finished.
    pub fn take(&self, range: std::ops::Range<usize>) -> (Vec<u64>, Vec<u64>) {
        self.take_if(range, |_| true)
    }

    /// The same, for the jobs in `range` that `keep` picks.
    pub fn take_if(
        &self,
        range: std::ops::Range<usize>,
        keep: impl Fn(usize) -> bool,
    ) -> (Vec<u64>, Vec<u64>) {
        let s = self.samples.lock().expect("not poisoned");
        let picked: Vec<usize> = range
            .filter(|i| s.done_at_us[*i] != 0 && keep(*i))
            .collect();
        let done = picked.iter().map(|i| s.done_at_us[*i]).collect();
        let lat = picked.iter().map(|i| s.latency_us[*i]).collect();
        (done, lat)
    }
}

/// Which work queue the jobs of each (tenant, channel) land in (an index
/// into `topology.work_queues`, by routing key): one probe each through the
/// jobs exchange, then read back from every queue. Run before any worker
/// consumes.
pub async fn work_queue_of(
    nodes: &broker::Nodes,
    topology: &Topology,
    publisher: &JobPublisher,
    keys: &[(String, &str)],
) -> anyhow::Result<std::collections::HashMap<String, usize>> {
    for (tenant, channel) in keys {
        let probe = serde_json::json!({ "tenant_id": tenant, "channel": channel }).to_string();
        publisher.publish_raw(probe.as_bytes(), None).await?;
    }
    let conn = broker::connect(nodes, "bench-probe").await?;
    let ch = conn.create_channel().await?;
    let mut found = std::collections::HashMap::new();
    for (i, q) in topology.work_queues.iter().enumerate() {
        while let Some(m) = ch
            .basic_get(
                q.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?
        {
            found.insert(outreach::job::routing_key(&m.delivery.data), i);
        }
    }
    let _ = conn.close(200, "bye".into()).await;
    anyhow::ensure!(
        found.len() == keys.len(),
        "probes lost: {} of {} found in the work queues",
        found.len(),
        keys.len()
    );
    Ok(found)
}

/// Delete a prefix's queues (with its `held` queues) and exchanges.
pub async fn delete_topology(
    nodes: &broker::Nodes,
    t: &Topology,
    held: &[String],
) -> anyhow::Result<()> {
    let conn = broker::connect(nodes, "bench-cleanup").await?;
    let ch = conn.create_channel().await?;
    t.delete(&ch, held).await?;
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

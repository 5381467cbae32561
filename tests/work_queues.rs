//! Several work queues (`amqp.work_queues`): tenants are hashed over them by
//! the jobs exchange, a tenant's jobs stay in one queue (retries included),
//! and a worker consumes them all. Real RabbitMQ with its consistent-hash
//! exchange plugin (enabled by scripts/services.sh).

use crate::support;

use lapin::options::BasicGetOptions;
use outreach::broker::{self, Topology};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::*;

const QUEUES: u16 = 4;

/// A test world whose topology has `QUEUES` work queues.
async fn env() -> TestEnv {
    let mut t = TestEnv::new().await;
    t.settings.amqp.work_queues = QUEUES;
    t.topology = Topology::new(&t.settings.amqp, &t.settings.worker.retry_delays_secs);
    t
}

/// Empty every work queue: which tenants' jobs each one held.
async fn drain_by_queue(t: &TestEnv) -> Vec<Vec<String>> {
    let conn = broker::connect(&AMQP_URL.parse().unwrap(), "test-drain")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut out = vec![];
    for q in &t.topology.work_queues {
        let mut tenants = vec![];
        while let Some(m) = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            tenants.push(outreach::job::peek_tenant(&m.delivery.data).unwrap());
        }
        out.push(tenants);
    }
    let _ = conn.close(200, "bye".into()).await;
    out
}

#[tokio::test]
async fn each_tenant_s_jobs_land_in_one_work_queue_and_tenants_spread_over_them() {
    let t = env().await;
    assert_eq!(t.topology.work_queues.len(), QUEUES as usize);
    let publisher = t.publisher().await;
    let jobs: Vec<Vec<u8>> = (0..24)
        .flat_map(|tenant| (0..3).map(move |k| (tenant, k)))
        .map(|(tenant, k)| {
            let p = email_payload(
                &format!("j-{tenant}-{k}"),
                &format!("clinic-{tenant}"),
                "a@example.com",
            );
            serde_json::to_vec(&p).unwrap()
        })
        .collect();
    publisher.publish_many(&jobs).await.unwrap();

    let by_queue = drain_by_queue(&t).await;
    assert_eq!(
        by_queue.iter().map(Vec::len).sum::<usize>(),
        72,
        "no job lost"
    );
    let mut queues_of: HashMap<String, HashSet<usize>> = HashMap::new();
    for (q, tenants) in by_queue.iter().enumerate() {
        for tenant in tenants {
            queues_of.entry(tenant.clone()).or_default().insert(q);
        }
    }
    assert!(
        queues_of.values().all(|qs| qs.len() == 1),
        "a tenant's jobs were split over queues: {queues_of:?}"
    );
    // 24 tenants over 4 evenly weighted queues: all but impossible to use fewer than 3.
    let used = by_queue.iter().filter(|q| !q.is_empty()).count();
    assert!(
        used >= 3,
        "tenants spread over only {used} of {QUEUES} queues"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn a_delayed_retry_comes_back_to_its_tenant_s_work_queue() {
    let t = env().await;
    let publisher = t.publisher().await;
    let job = serde_json::to_vec(&email_payload("j-r", "clinic-r", "a@example.com")).unwrap();
    publisher.publish(&job).await.unwrap();
    let first = drain_by_queue(&t).await;
    let home = first.iter().position(|q| !q.is_empty()).unwrap();

    // As the worker republishes a retry: through the 1 s delay queue.
    let conn = broker::connect(&AMQP_URL.parse().unwrap(), "test-retry")
        .await
        .unwrap();
    let ch = broker::confirm_channel(&conn).await.unwrap();
    let key = outreach::job::routing_key(&job);
    assert_eq!(key, "clinic-r.email");
    t.topology
        .publish_delayed(&ch, 1, &key, &job, broker::persistent_json())
        .await
        .unwrap();
    for other in [2, 5] {
        let depth = broker::queue_depth(&conn, &t.topology.retry_queue(other))
            .await
            .unwrap();
        assert_eq!(depth, Some(0), "only the 1 s delay queue holds it");
    }
    eventually(
        Duration::from_secs(20),
        "the retry is back in a work queue",
        || async { t.topology.work_depth(&conn).await.unwrap() == 1 },
    )
    .await;
    let back = drain_by_queue(&t).await;
    assert_eq!(
        back[home],
        vec!["clinic-r".to_string()],
        "back in queue {home}: {back:?}"
    );
    let _ = conn.close(200, "bye".into()).await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sends_the_jobs_of_every_work_queue() {
    let t = env().await;
    let mut env = t.env_vars();
    env.insert("OUTREACH__AMQP__WORK_QUEUES".into(), QUEUES.to_string());
    let record = t.record_emails(&mut env);
    let publisher = t.publisher().await;
    let jobs: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            let p = email_payload(
                &format!("j-{i}"),
                &format!("clinic-{}", i % 20),
                "a@example.com",
            );
            serde_json::to_vec(&p).unwrap()
        })
        .collect();
    publisher.publish_many(&jobs).await.unwrap();

    let worker = Binary::worker(&env);
    eventually(Duration::from_secs(60), "all 40 jobs are final", || async {
        t.count_final().await >= 40
    })
    .await;
    assert!(worker.terminate().success());
    let rows = t.log_rows().await;
    assert_eq!(rows.len(), 40);
    assert!(
        rows.iter().all(|(_, status, _)| status == "simulated"),
        "{rows:?}"
    );
    let sends = std::fs::read_to_string(&record).unwrap();
    assert_eq!(sends.lines().count(), 40, "each job sent once");
    t.cleanup().await;
}

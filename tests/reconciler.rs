//! Rows left in flight past their time: counted while they may still be
//! legitimate, ended `expired` (lost) with an event once they cannot be.

use crate::support;

use std::time::Duration;
use support::tenants::row;
use support::{TestEnv, eventually, free_port, http_get};

/// A row as a lost job leaves it: `retrying`, its message never coming back.
async fn stranded(env: &TestEnv, id: &str, age: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO outreach_logs (job_id, tenant_id, channel, status, attempts, retry_at, created_at)
         VALUES ('{id}', 'clinic-1', 'email', 'retrying', 1, now() - interval '{age}', now() - interval '{age}')"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_row_no_delivery_can_still_settle_is_ended_lost_with_its_event_and_a_late_one_is_counted()
{
    let env = TestEnv::new().await;
    stranded(&env, "lost-1", "3 days").await;
    stranded(&env, "late-1", "10 minutes").await;
    let mut s = env.settings.clone();
    s.reconciler.interval_secs = 1;
    s.reconciler.grace_secs = 60;
    let port = free_port();
    s.http.bind = format!("127.0.0.1:{port}");
    let mut events = env.event_queue().await;
    let (stop, worker) = env.spawn_worker(s);

    let (key, event) = events
        .next(Duration::from_secs(30))
        .await
        .expect("an event");
    assert_eq!(key, "expired.email");
    assert_eq!(event["job_id"], "lost-1");
    assert_eq!(event["error"]["code"], "lost");
    // The event is confirmed before the row commits (so a pass that cannot
    // publish changes nothing): the row follows a moment later.
    eventually(
        Duration::from_secs(10),
        "the lost row to be final",
        || async { row(&env, "lost-1").await.unwrap()["status"] == "expired" },
    )
    .await;
    let lost = row(&env, "lost-1").await.unwrap();
    assert_eq!(lost["error_code"], "lost");
    // Ten minutes late may be a job waiting behind its tenant's rate limit:
    // counted for an alert, not touched.
    assert_eq!(row(&env, "late-1").await.unwrap()["status"], "retrying");
    eventually(Duration::from_secs(10), "the overdue gauge", || async {
        let (_, m) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
        m.lines()
            .any(|l| l == "outreach_jobs_overdue{status=\"retrying\"} 1")
    })
    .await;

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

//! `outreach demo`: migrate, create demo tenants, enqueue a few hundred jobs
//! over tenants and channels (and three bad ones), run a worker until they
//! are all final, and print what happened per provider.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use outreach::broker::Topology;
use outreach::enqueue::JobPublisher;
use outreach::settings::Settings;
use outreach::{app, db};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub struct DemoOptions {
    pub jobs: usize,
    pub tenants: usize,
    pub timeout: Duration,
}

pub async fn run(mut settings: Settings, opts: DemoOptions) -> anyhow::Result<()> {
    app::install_crypto();
    // Do not collide with a worker already serving the configured port.
    settings.http.bind = "127.0.0.1:0".into();
    // A local demo's providers (a Mailpit or a fake on this machine) live on
    // 127.0.0.1, which provider calls may not reach unless allow-listed.
    settings.allow_loopback();
    let stand_ins = settings.channels_without_default();
    if !stand_ins.is_empty() {
        // The demo needs no accounts: the sandbox stands in, and says so.
        let names: Vec<&str> = stand_ins.iter().map(|c| c.as_str()).collect();
        eprintln!(
            "no system default for {}: the demo uses the sandbox there, which sends nothing (status `simulated`)",
            names.join(", ")
        );
        settings.sandbox_where_no_default();
    }
    let pool = db::connect_creating(&settings.database).await?;
    db::migrate(&pool).await?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let tenants: Vec<String> = (1..=opts.tenants.max(1))
        .map(|i| format!("demo-clinic-{i}"))
        .collect();
    for t in &tenants {
        sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
            .bind(t)
            .bind(format!("Demo clinic {}", &t[12..]))
            .execute(&pool)
            .await?;
    }

    let topology = Topology::new(&settings.amqp, &settings.worker.retry_delays_secs);
    let publisher = JobPublisher::connect(&settings.amqp.nodes(), &topology)
        .await
        .context("demo publisher")?;
    let mut payloads = Vec::with_capacity(opts.jobs + 3);
    let mut ids = Vec::with_capacity(opts.jobs + 3);
    for n in 0..opts.jobs {
        let id = format!("demo-{run_id}-{n}");
        let tenant = &tenants[n % tenants.len()];
        let job = match n % 3 {
            0 => {
                serde_json::json!({"job_id": id, "tenant_id": tenant, "channel": "email", "recipient": format!("patient{n}@example.com"),
                  "content": {"subject": "Your appointment", "text": "See you on Tuesday at 10:00.", "html": "<p>See you on <b>Tuesday</b> at 10:00.</p>"},
                  "metadata": {"demo_run": run_id}})
            }
            1 => {
                serde_json::json!({"job_id": id, "tenant_id": tenant, "channel": "sms", "recipient": format!("+1415555{:04}", n % 10_000),
                  "content": {"text": "Reminder: appointment Tuesday 10:00. Reply STOP to opt out."}, "metadata": {"demo_run": run_id}})
            }
            _ => {
                serde_json::json!({"job_id": id, "tenant_id": tenant, "channel": "whatsapp", "recipient": format!("+4477009{:05}", n % 100_000),
                  "content": {"template": {"name": "appointment_reminder", "language": "en_US", "parameters": ["Tuesday 10:00"]}},
                  "metadata": {"demo_run": run_id}})
            }
        };
        payloads.push(serde_json::to_vec(&job)?);
        ids.push(id);
    }
    // Three bad jobs, to show where they end up.
    for (k, bad) in [
        serde_json::json!({"job_id": format!("demo-{run_id}-bad-recipient"), "tenant_id": tenants[0], "channel": "sms", "recipient": "not-a-number", "content": {"text": "x"}}),
        serde_json::json!({"job_id": format!("demo-{run_id}-bad-channel"), "tenant_id": tenants[0], "channel": "fax", "recipient": "+14155550100", "content": {"text": "x"}}),
    ]
    .into_iter()
    .enumerate()
    {
        ids.push(bad["job_id"].as_str().unwrap_or_default().to_owned());
        payloads.push(serde_json::to_vec(&bad)?);
        let _ = k;
    }
    payloads.push(b"{ this is not json".to_vec());
    publisher
        .publish_many(&payloads)
        .await
        .context("enqueue demo jobs")?;
    eprintln!(
        "enqueued {} jobs ({} valid, 3 invalid) for {} tenants",
        payloads.len(),
        opts.jobs,
        tenants.len()
    );

    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(app::run_worker(settings.clone(), shutdown.clone()));

    let bar = ProgressBar::new(ids.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} jobs final ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM outreach_logs WHERE job_id = ANY($1) AND status IN ('sent', 'simulated', 'failed', 'expired')")
            .bind(&ids)
            .fetch_one(&pool)
            .await?;
        bar.set_position(done as u64);
        if done as usize >= ids.len() {
            break;
        }
        if started.elapsed() > opts.timeout || worker.is_finished() {
            bar.abandon();
            shutdown.cancel();
            worker.await??;
            anyhow::bail!(
                "only {done} of {} jobs finished within {:?}; is the worker healthy? (see the log above)",
                ids.len(),
                opts.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish();
    let elapsed = started.elapsed();
    shutdown.cancel();
    worker.await??;

    let rows: Vec<(Option<String>, Option<String>, String, i64)> = sqlx::query_as(
        "SELECT channel::text, provider, status::text, count(*) FROM outreach_logs WHERE job_id = ANY($1)
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await?;
    println!(
        "\n{:<10} {:<10} {:<8} {:>6}",
        "channel", "provider", "status", "jobs"
    );
    for (channel, provider, status, n) in rows {
        println!(
            "{:<10} {:<10} {:<8} {:>6}",
            channel.unwrap_or("-".into()),
            provider.unwrap_or("-".into()),
            status,
            n
        );
    }
    println!(
        "\n{} job ids in {:.1}s; the unreadable payload has no job id, so no log row: it is in {} with its reason, as are the two invalid jobs.",
        ids.len(),
        elapsed.as_secs_f64(),
        topology.dead_letter_queue
    );
    println!(
        "Delivery events went to the topic exchange {} (routing keys like sent.email; simulated.email where the sandbox took the job, which delivers nothing).",
        topology.events_exchange
    );
    Ok(())
}

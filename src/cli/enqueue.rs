//! `outreach enqueue`: publish a job from a JSON file or from flags.

use anyhow::Context;
use clap::Args;
use outreach::broker::Topology;
use outreach::enqueue::JobPublisher;
use outreach::job::{Job, JobError};
use outreach::settings::Settings;
use std::path::PathBuf;

#[derive(Args)]
pub struct EnqueueArgs {
    /// A job JSON file ("-" reads stdin). Without it, the job is built from the flags.
    #[arg(long, conflicts_with_all = ["tenant", "channel", "to"])]
    file: Option<PathBuf>,
    /// Publish the file's bytes as they are, without validating (to test bad input).
    #[arg(long, requires = "file")]
    raw: bool,
    /// The tenant (clinic) whose messaging config sends it.
    #[arg(long)]
    tenant: Option<String>,
    /// email, sms or whatsapp.
    #[arg(long)]
    channel: Option<String>,
    /// Recipient: an email address or an E.164 number.
    #[arg(long)]
    to: Option<String>,
    /// Email subject (required for email).
    #[arg(long)]
    subject: Option<String>,
    /// Message text (email plain-text part, SMS, WhatsApp text).
    #[arg(long)]
    text: Option<String>,
    /// Email HTML part.
    #[arg(long)]
    html: Option<String>,
    /// WhatsApp template name (with --language and --param).
    #[arg(long)]
    template: Option<String>,
    /// The template's language code.
    #[arg(long, default_value = "en_US")]
    language: String,
    /// A template parameter, in order; repeat for each.
    #[arg(long = "param")]
    params: Vec<String>,
    /// Idempotency key; a new UUIDv7 when omitted.
    #[arg(long)]
    job_id: Option<String>,
    /// JSON object echoed into the delivery events.
    #[arg(long)]
    metadata: Option<String>,
}

/// Validate (unless `--raw`) and publish with a confirm; print the job id.
pub async fn enqueue(settings: &Settings, a: EnqueueArgs) -> anyhow::Result<()> {
    let payload = match &a.file {
        Some(p) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        None => {
            let mut content = serde_json::Map::new();
            for (k, v) in [
                ("subject", &a.subject),
                ("text", &a.text),
                ("html", &a.html),
            ] {
                if let Some(v) = v {
                    content.insert(k.into(), v.clone().into());
                }
            }
            if let Some(name) = &a.template {
                content.insert("template".into(), serde_json::json!({"name": name, "language": a.language, "parameters": a.params}));
            }
            let metadata = a
                .metadata
                .as_deref()
                .map(serde_json::from_str::<serde_json::Value>)
                .transpose()
                .context("--metadata must be a JSON object")?;
            let job = serde_json::json!({
                "version": 1,
                "job_id": a.job_id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                "tenant_id": a.tenant.as_deref().context("--tenant is required without --file")?,
                "channel": a.channel.as_deref().context("--channel is required without --file")?,
                "recipient": a.to.as_deref().context("--to is required without --file")?,
                "content": content,
                "metadata": metadata,
            });
            serde_json::to_vec(&job)?
        }
    };
    // Validated before connecting, by the worker's own validator: a job it
    // would refuse is never published, and an error about a job built from
    // flags names the flag to fix.
    let job = if a.raw {
        None
    } else {
        match Job::decode(&payload) {
            Ok(job) => Some(job),
            Err(e) => {
                return Err(match (&a.file, flag_of(&e)) {
                    (None, Some(flag)) => anyhow::anyhow!("{e} (set with {flag})"),
                    _ => e.into(),
                });
            }
        }
    };
    let topology = Topology::new(&settings.amqp, &settings.worker.retry_delays_secs);
    let publisher = JobPublisher::connect(&settings.amqp.nodes(), &topology).await?;
    // Validated above: published as it is, with its id as the message id
    // (what `JobPublisher::publish` does after validating again).
    publisher
        .publish_raw(&payload, job.as_ref().map(|j| j.id.as_str()))
        .await?;
    match job {
        Some(job) => println!("{}", job.id),
        None => println!("published {} raw bytes", payload.len()),
    }
    Ok(())
}

/// The flag that sets the job field an error is about.
fn flag_of(e: &JobError) -> Option<&'static str> {
    let field = match e {
        JobError::MissingField(f)
        | JobError::InvalidField { field: f, .. }
        | JobError::FieldTooLong { field: f, .. } => *f,
        JobError::InvalidRecipient { .. } => "recipient",
        JobError::UnknownChannel(_) => "channel",
        JobError::WrongContent { .. } => "content",
        _ => return None,
    };
    let flag = match field {
        "tenant_id" => "--tenant",
        "channel" => "--channel",
        "recipient" => "--to",
        "job_id" => "--job-id",
        f if f.starts_with("metadata") => "--metadata",
        f if f.starts_with("content.subject") => "--subject",
        f if f.starts_with("content.text") => "--text",
        f if f.starts_with("content.html") => "--html",
        f if f.starts_with("content.template") => "--template, --language and --param",
        f if f.starts_with("content") => "--subject, --text, --html or --template",
        _ => return None,
    };
    Some(flag)
}

//! `outreach suppression list / add / remove` (glue: errors are `anyhow`).
//! Changes are audited as `cli:<user>`, like tenant config changes.

use clap::Subcommand;
use outreach::db;
use outreach::job::{Channel, TenantId};
use outreach::settings::Settings;
use outreach::suppression::{Reason, change_audited, list};

#[derive(Subcommand)]
pub enum SuppressionCommand {
    /// A tenant's suppressed recipients, newest first.
    List {
        tenant: String,
        #[arg(long)]
        channel: Option<Channel>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Suppress a recipient for a tenant's channel.
    Add {
        tenant: String,
        #[arg(long)]
        channel: Channel,
        /// Email address or phone number (normalised: see README).
        #[arg(long)]
        to: String,
        /// hard_bounce, complaint, unsubscribe, opt_out or manual.
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Lift a recipient's suppression.
    Remove {
        tenant: String,
        #[arg(long)]
        channel: Channel,
        #[arg(long)]
        to: String,
    },
}

pub async fn suppression(settings: &Settings, cmd: SuppressionCommand) -> anyhow::Result<()> {
    let pool = db::connect_creating(&settings.database).await?;
    db::migrate(&pool).await?;
    let tenant_id = |t: &str| TenantId::parse(t).map_err(|e| anyhow::anyhow!("{e}"));
    match cmd {
        SuppressionCommand::List {
            tenant,
            channel,
            json,
        } => {
            let entries = list(&pool, tenant_id(&tenant)?.as_str(), channel).await?;
            for e in &entries {
                if json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!(
                        "{:<9} {:<32} {:<12} {:<24} {}",
                        e.channel.as_str(),
                        e.recipient,
                        e.reason,
                        e.source,
                        e.created_at
                            .format(&time::format_description::well_known::Rfc3339)?
                    );
                }
            }
            eprintln!("{} suppressed", entries.len());
        }
        SuppressionCommand::Add {
            tenant,
            channel,
            to,
            reason,
        } => {
            let reason: Reason = reason.parse()?;
            let t = tenant_id(&tenant)?;
            let added = change_audited(
                &pool,
                &super::tenant::actor(),
                &t,
                channel,
                &to,
                Some(reason),
            )
            .await?;
            println!("{}", if added { "added" } else { "already suppressed" });
        }
        SuppressionCommand::Remove {
            tenant,
            channel,
            to,
        } => {
            let t = tenant_id(&tenant)?;
            let removed =
                change_audited(&pool, &super::tenant::actor(), &t, channel, &to, None).await?;
            println!("{}", if removed { "removed" } else { "not suppressed" });
        }
    }
    Ok(())
}

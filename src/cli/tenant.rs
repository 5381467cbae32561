//! The `tenant`, `keys` and `admin` commands (glue: errors are `anyhow`).

use anyhow::{Context, bail};
use clap::Subcommand;
use outreach::admin_api;
use outreach::job::{Channel, TenantId};
use outreach::pipeline::QuickRetry;
use outreach::settings::Settings;
use outreach::tenant::{ChannelConfig, Directory, TenantStore, rotate, view};
use outreach::{app, crypto, db};
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Store a channel's config from a TOML or JSON file (creates the tenant).
    Set {
        tenant: String,
        #[arg(long)]
        channel: Channel,
        /// `.toml` or `.json` (anything else is read as JSON).
        #[arg(long)]
        file: PathBuf,
    },
    /// Show a tenant's configs with secrets masked (exit 1 when it has none).
    Show {
        tenant: String,
        /// One JSON document `{tenant, channels}`, as the admin API answers.
        #[arg(long)]
        json: bool,
    },
    /// List every stored config.
    List {
        /// One JSON object per config and line.
        #[arg(long)]
        json: bool,
    },
    /// Delete one channel's config, or the tenant with all of them (exit 1
    /// when there is nothing to delete).
    Delete {
        tenant: String,
        #[arg(long)]
        channel: Option<Channel>,
    },
    /// Send a real test message through the tenant's chain.
    Test {
        tenant: String,
        #[arg(long)]
        channel: Channel,
        /// Email address or E.164 number.
        #[arg(long)]
        to: String,
        /// The result as one JSON object on one line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print a new key id and key, and how to configure them.
    Generate,
    /// Re-encrypt every stored credential with the active key (re-runnable).
    Rotate,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Print the SHA-256 of an API token, for admin.operator_token_sha256 /
    /// tenant_tokens: of a new random token (--generate), of one read from
    /// standard input (--stdin), or of TOKEN.
    HashToken {
        /// The token. A command line is seen in the shell's history and the
        /// process list: prefer --generate or --stdin.
        #[arg(required_unless_present_any = ["stdin", "generate"], conflicts_with_all = ["stdin", "generate"])]
        token: Option<String>,
        /// Read the token from standard input (its first line).
        #[arg(long)]
        stdin: bool,
        /// Make a new random token (32 random bytes, hex) and print it with
        /// its digest: `token <token>` then `sha256 <digest>`.
        #[arg(long, conflicts_with = "stdin")]
        generate: bool,
    },
}

/// `cli:<user>`, the audit actor of CLI changes.
pub fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

async fn store(settings: &Settings) -> anyhow::Result<TenantStore> {
    let pool = db::connect_creating(&settings.database).await?;
    db::migrate(&pool).await?;
    let keys = settings.key_ring().context("crypto.keys")?;
    Ok(TenantStore::new(pool, Arc::new(keys))
        .with_max_chain_len(settings.tenant_config.max_chain_len))
}

fn tenant_id(s: &str) -> anyhow::Result<TenantId> {
    TenantId::parse(s).map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn tenant(settings: &Settings, cmd: TenantCommand) -> anyhow::Result<()> {
    let store = store(settings).await?;
    match cmd {
        TenantCommand::Set {
            tenant,
            channel,
            file,
        } => {
            let t = tenant_id(&tenant)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let is_toml = file.extension().is_some_and(|e| e == "toml");
            let cfg = if is_toml {
                ChannelConfig::from_toml(&text, channel)
            } else {
                let v = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("not valid JSON at line {}", e.line()))?;
                ChannelConfig::from_json(v, channel)
            }?;
            let version = store.put(&t, channel, &cfg, &actor()).await?;
            println!("{tenant} {channel}: stored version {version}");
        }
        TenantCommand::Show { tenant, json } => {
            let rows = store.get_tenant(&tenant_id(&tenant)?).await?;
            if rows.is_empty() {
                // As a missing config is an error from the admin API's
                // DELETE; its jobs use the system defaults.
                bail!("{tenant}: no config stored (its jobs use the system defaults)");
            }
            if json {
                let channels: serde_json::Map<String, serde_json::Value> = rows
                    .iter()
                    .map(|r| (r.channel.to_string(), view::masked(&store, r)))
                    .collect();
                let doc = serde_json::json!({ "tenant": tenant, "channels": channels });
                println!("{}", serde_json::to_string(&doc)?);
            }
            for r in rows.iter().filter(|_| !json) {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&view::masked(&store, r))?
                );
            }
        }
        TenantCommand::List { json } => {
            for r in store.list().await? {
                let providers: Vec<String> = r
                    .providers()
                    .iter()
                    .map(|p| p.map_or("?".into(), |k| k.to_string()))
                    .collect();
                if json {
                    let row = serde_json::json!({
                        "tenant": r.tenant,
                        "channel": r.channel,
                        "enabled": r.enabled,
                        "chain": providers,
                        "fallback_to_system": r.fallback_to_system,
                        "version": r.version,
                    });
                    println!("{}", serde_json::to_string(&row)?);
                    continue;
                }
                println!(
                    "{}\t{}\t{}\tchain=[{}]\tfallback_to_system={}\tv{}",
                    r.tenant,
                    r.channel,
                    if r.enabled { "enabled" } else { "disabled" },
                    providers.join(","),
                    r.fallback_to_system,
                    r.version
                );
            }
        }
        TenantCommand::Delete { tenant, channel } => {
            let found = store
                .delete(&tenant_id(&tenant)?, channel, &actor())
                .await?;
            if !found {
                // The admin API answers 404 here.
                match channel {
                    Some(c) => bail!("{tenant}: nothing to delete (no {c} config stored)"),
                    None => bail!("{tenant}: nothing to delete (no config stored)"),
                }
            }
            println!("deleted");
        }
        TenantCommand::Test {
            tenant,
            channel,
            to,
            json,
        } => {
            let t = tenant_id(&tenant)?;
            app::install_crypto();
            let ctx = app::provider_context(settings);
            let directory = Directory::new(settings, &ctx)
                .context("system default providers")?
                .with_store(store);
            let job = admin_api::test_job(&t, channel, &to).map_err(|e| anyhow::anyhow!(e))?;
            let quick = QuickRetry {
                times: settings.worker.quick_retries,
                base: Duration::from_millis(settings.worker.quick_retry_base_ms),
            };
            let result = admin_api::send_test(&directory, &job, &quick).await;
            if json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&result)?);
            }
            if result["simulated"] == true {
                eprintln!("the sandbox accepted the test message: nothing was delivered");
            } else if result["sent"] != true {
                bail!("the test message was not sent");
            }
        }
    }
    Ok(())
}

pub async fn keys(settings: &Settings, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Generate => {
            let (kid, key) = crypto::generate_key();
            println!("kid: {kid}\nkey: {}", key.expose_secret());
            println!(
                "\nConfigure it (keep older keys listed until `outreach keys rotate` has run):\n  \
                 OUTREACH_ENCRYPTION_KEYS=\"<older kid:key,>{kid}:<key>\"\n\
                 or in the config file:\n  [[crypto.keys]]\n  id = \"{kid}\"\n  key = \"<key>\"\n\
                 The last key listed encrypts unless crypto.active_key names another."
            );
        }
        KeysCommand::Rotate => {
            let store = store(settings).await?;
            let active = store
                .keys()
                .active_kid()
                .context("no encryption key configured")?
                .to_owned();
            println!("re-encrypting stored credentials with key {active}");
            let report = rotate::rotate_all(&store, &actor(), |done, total, t, c, row| {
                println!(
                    "[{done}/{total}] {t} {c}: {} value(s) re-encrypted{}",
                    row.rotated,
                    not_decrypted(row.failures.len())
                );
            })
            .await?;
            println!(
                "done: {} row(s), {} value(s) re-encrypted{}",
                report.rows,
                report.values,
                not_decrypted(report.failures.len())
            );
            if !report.failures.is_empty() {
                // Each error names tenant, channel and field, and the key
                // id: never the value or the key.
                eprintln!("not re-encrypted (left as stored):");
                for f in &report.failures {
                    eprintln!("  {}", f.error);
                }
                bail!(
                    "{} value(s) could not be re-encrypted (listed above); configure their \
                     key or store them again with `outreach tenant set`, then run \
                     `outreach keys rotate` again",
                    report.failures.len()
                );
            }
        }
    }
    Ok(())
}

/// `, N could not be decrypted`, or nothing when none failed.
fn not_decrypted(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {n} could not be decrypted")
    }
}

pub fn admin(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::HashToken { generate: true, .. } => {
            let token = hex::encode(rand::random::<[u8; 32]>());
            println!("token {token}");
            println!("sha256 {}", admin_api::hash_token(&token));
        }
        AdminCommand::HashToken { stdin: true, .. } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let token = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(
                !token.is_empty(),
                "no token on standard input (give one line, e.g. `outreach admin hash-token --stdin < token.txt`)"
            );
            println!("{}", admin_api::hash_token(token));
        }
        AdminCommand::HashToken { token, .. } => {
            let token = token.expect("clap requires TOKEN without --stdin or --generate");
            println!("{}", admin_api::hash_token(&token));
        }
    }
    Ok(())
}

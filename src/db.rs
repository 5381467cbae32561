//! PostgreSQL: the pool, database creation and the embedded migrations.

use crate::settings::DatabaseSettings;
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL is invalid: {0}")]
    Url(sqlx::Error),
    #[error(
        "cannot reach PostgreSQL at {target} (check database.url / OUTREACH__DATABASE__URL): {source}"
    )]
    Connect { target: String, source: sqlx::Error },
    #[error("cannot create database {name}: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] MigrateError),
}

fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    PgConnectOptions::from_str(url).map_err(DbError::Url)
}

/// A pool for the configured database (not yet checked: connections open lazily).
pub fn pool(s: &DatabaseSettings) -> Result<PgPool, DbError> {
    Ok(PgPoolOptions::new()
        .max_connections(s.max_connections)
        .acquire_timeout(Duration::from_secs(s.acquire_timeout_secs))
        .connect_lazy_with(options(&s.url)?))
}

/// Create the configured database when it does not exist yet, then connect.
pub async fn connect_creating(s: &DatabaseSettings) -> Result<PgPool, DbError> {
    let opts = options(&s.url)?;
    let name = opts.get_database().unwrap_or("postgres").to_owned();
    let target = format!("{}:{}/{}", opts.get_host(), opts.get_port(), name);
    let admin = opts.clone().database("postgres");
    let mut conn = admin.connect().await.map_err(|source| DbError::Connect {
        target: target.clone(),
        source,
    })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .map_err(|source| DbError::Connect {
                target: target.clone(),
                source,
            })?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(source) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            // Another process created it meanwhile: 42P04 (duplicate
            // database) when it had committed, 23505 (unique violation on
            // pg_database) when both were creating it at once.
            let raced = source
                .as_database_error()
                .and_then(|e| e.code())
                .is_some_and(|c| c == "42P04" || c == "23505");
            if !raced {
                return Err(DbError::Create { name, source });
            }
        }
        tracing::info!(database = %name, "created database");
    }
    let pool = pool(s)?;
    pool.acquire()
        .await
        .map_err(|source| DbError::Connect { target, source })?;
    Ok(pool)
}

/// Apply the embedded migrations. Safe from several processes at once: sqlx
/// holds a PostgreSQL advisory lock while it migrates, so the others wait
/// and then find nothing left to do.
///
/// Quietly: over a connection of its own that asks PostgreSQL for warnings
/// and errors only, since every run would otherwise log the NOTICE
/// `relation "_sqlx_migrations" already exists, skipping` (sqlx logs
/// notices at INFO), while the pool's connections keep their settings.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    let quiet = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("client_min_messages", "warning")]);
    let migrating = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(quiet)
        .await
        .map_err(MigrateError::from)?;
    let done = MIGRATOR.run(&migrating).await;
    migrating.close().await;
    Ok(done?)
}

//! The market's database: SQLite (a file under the data dir) or Postgres, through sqlx's `Any`
//! driver, with one set of migrations (`market/migrations`). Queries use only portable SQL and
//! `$n` placeholders, which both engines accept.

use sqlx::{AnyPool, Row, any::AnyPoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the market database {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the market database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// A connected, migrated database.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: &'static str,
}

impl Db {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://…`) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") { "postgres" } else { "sqlite" };
        // SQLite serializes writers; one connection avoids "database is locked" under load
        let max = if backend == "sqlite" { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == "sqlite" {
                        // a page cache that holds the search indexes (the default is 2 MiB)
                        sqlx::query("PRAGMA cache_size = -65536").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA mmap_size = 268435456").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|source| DbError::Open { url: redact(url), source })?;
        if backend == "sqlite" {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
            sqlx::query("PRAGMA synchronous = NORMAL").execute(&pool).await?;
        }
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool, backend })
    }

    /// The indexer's position: (block, block hash), if it has indexed anything.
    pub async fn cursor(&self, name: &str) -> Result<Option<(u64, String)>, DbError> {
        let row = sqlx::query("SELECT block, block_hash FROM cursor WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get::<i64, _>(0) as u64, r.get::<String, _>(1))))
    }
}

/// `url` without its password, for error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Lowercase search terms of a text: alphanumeric runs of 2–40 characters.
pub fn terms(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| t.len() >= 2 && t.len() <= 40)
        .map(|t| t.to_lowercase())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_split_lowercase_and_dedup() {
        assert_eq!(terms("BTC-USD trades, btc trades 2024!"), vec!["2024", "btc", "trades", "usd"]);
        assert!(terms("a b c").is_empty());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@127.0.0.1:5432/db"), "postgres://u:***@127.0.0.1:5432/db");
        assert_eq!(redact("sqlite:///tmp/m.db"), "sqlite:///tmp/m.db");
    }
}

//! The key database named by `--database-url`: SQLite (the default, a file) or PostgreSQL.

use clap::Args;
use keygate::{PostgresKeyStore, SqliteKeyStore};

use crate::Failure;

/// Where the keys live.
#[derive(Debug, Clone, Args)]
pub(crate) struct DatabaseArgs {
    /// The key database: a SQLite file (`sqlite://keygate.db`, `sqlite:path`, a bare path,
    /// `sqlite::memory:`; created by `serve` and `keys create` if missing), or PostgreSQL
    /// (`postgres://user@host/db`), shared by a fleet with revocations pushed to every instance.
    #[arg(
        long,
        env = "KEYGATE_DATABASE_URL",
        default_value = "sqlite://keygate.db"
    )]
    pub(crate) database_url: String,
}

/// An open key database.
pub(crate) enum Store {
    Sqlite(SqliteKeyStore),
    Postgres(PostgresKeyStore),
}

/// What a database URL names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Location<'a> {
    SqliteFile(&'a str),
    SqliteMemory,
    Postgres(&'a str),
}

/// Reads a database URL without opening anything.
pub(crate) fn parse_location(url: &str) -> Result<Location<'_>, Failure> {
    let url = url.trim();
    if url.is_empty() {
        return Err(Failure::Config("--database-url is empty".into()));
    }
    if url == "sqlite::memory:" || url == "sqlite://:memory:" {
        return Ok(Location::SqliteMemory);
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Location::Postgres(url));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.is_empty() {
        return Err(Failure::Config(format!(
            "--database-url {url:?} names no file"
        )));
    }
    if path.contains("://") {
        return Err(Failure::Config(format!(
            "--database-url {url:?}: only sqlite:// (or a file path) and postgres:// are supported"
        )));
    }
    Ok(Location::SqliteFile(path))
}

impl DatabaseArgs {
    /// Opens (and migrates) the database.
    ///
    /// A SQLite file that cannot be opened is a configuration mistake (exit 2, as for `serve`);
    /// a PostgreSQL server that cannot be reached is a failure at run time (exit 3).
    pub(crate) async fn open(&self) -> Result<Store, Failure> {
        Ok(match parse_location(&self.database_url)? {
            Location::SqliteFile(path) => {
                Store::Sqlite(SqliteKeyStore::open(path).await.map_err(|e| {
                    Failure::Config(format!(
                        "cannot open the SQLite key database {path:?} ({}): check \
                         --database-url, the directory and its permissions",
                        error_chain(&e)
                    ))
                })?)
            }
            Location::SqliteMemory => {
                Store::Sqlite(SqliteKeyStore::in_memory().await.map_err(|e| {
                    Failure::Runtime(format!("cannot open sqlite::memory: ({})", error_chain(&e)))
                })?)
            }
            Location::Postgres(url) => {
                Store::Postgres(PostgresKeyStore::connect(url).await.map_err(|e| {
                    Failure::Runtime(format!(
                        "cannot open the PostgreSQL key database ({}): check that the server \
                         runs and that --database-url names it",
                        error_chain(&e)
                    ))
                })?)
            }
        })
    }
}

/// An error and its causes, on one line: `outer: cause: root cause`.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_right_store() {
        assert_eq!(
            parse_location("sqlite://keygate.db").ok(),
            Some(Location::SqliteFile("keygate.db"))
        );
        assert_eq!(
            parse_location("sqlite:/tmp/k.db").ok(),
            Some(Location::SqliteFile("/tmp/k.db"))
        );
        assert_eq!(
            parse_location("keys.db").ok(),
            Some(Location::SqliteFile("keys.db"))
        );
        assert_eq!(
            parse_location("sqlite::memory:").ok(),
            Some(Location::SqliteMemory)
        );
        assert_eq!(
            parse_location("postgres://u@h/db").ok(),
            Some(Location::Postgres("postgres://u@h/db"))
        );
        assert!(parse_location("").is_err());
        assert!(parse_location("sqlite://").is_err());
        assert!(parse_location("mysql://h/db").is_err());
    }
}

//! Which database `database_url` points at.

use super::Config;
use std::path::PathBuf;

/// Which database the configuration points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Config {
    pub fn database(&self) -> anyhow::Result<Database> {
        match self.database_url.as_deref() {
            None | Some("") => Ok(Database::Sqlite(self.data_dir.join("mkww-mcp.db"))),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Database::Postgres(url.to_owned()))
            }
            Some(url) => match url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
            {
                Some(path) if !path.is_empty() => Ok(Database::Sqlite(PathBuf::from(path))),
                _ => anyhow::bail!(
                    "database_url must start with postgres://, postgresql:// or sqlite://"
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_database_from_the_url() {
        let mut config = Config {
            database_url: Some("postgres://u@h/db".into()),
            ..Config::default()
        };
        assert_eq!(
            config.database().unwrap(),
            Database::Postgres("postgres://u@h/db".into())
        );
        config.database_url = Some("sqlite:///tmp/x.db".into());
        assert_eq!(
            config.database().unwrap(),
            Database::Sqlite(PathBuf::from("/tmp/x.db"))
        );
        config.database_url = Some("mysql://nope".into());
        assert!(config.database().is_err());
    }
}

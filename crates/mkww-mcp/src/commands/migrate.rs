//! `mkww-mcp migrate`: applies the database migrations and exits.

use crate::config::Config;
use crate::logging::init_logging;
use crate::serve::stores::open_store;
use std::path::Path;

pub async fn migrate(file: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    init_logging(&config);
    open_store(&config).await?;
    tracing::info!("migrations applied");
    Ok(())
}

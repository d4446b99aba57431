//! `mkww-mcp token`: prints an access token signed with the configured key.

use crate::config::Config;
use std::path::Path;
use std::time::Duration;

/// Prints a token for `mkww-mcp token`.
pub fn token(
    file: Option<&Path>,
    role: mcp_core::principal::Role,
    sub: &str,
    ttl: Duration,
) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    let token = config.tokens()?.issue(sub, role, ttl)?;
    println!("{token}");
    Ok(())
}

//! `mkww-mcp user create`: a user made from the command line (a cluster's first admin,
//! scripted set-ups).

use crate::config::Config;
use crate::logging::init_logging;
use crate::serve::admin::new_user;
use crate::serve::stores::open_store;
use anyhow::Context;
use mcp_core::StoreError;
use mcp_core::credentials;
use mcp_core::identity::AuditEvent;
use mcp_core::principal::Role;
use std::path::Path;

/// `mkww-mcp user create`: the password comes from stdin (`--password-stdin`) or is generated
/// and printed once.
pub async fn create_user(
    file: Option<&Path>,
    username: &str,
    role: Role,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    init_logging(&config);
    let (password, generated) = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        (line.trim_end_matches(['\r', '\n']).to_owned(), false)
    } else {
        (credentials::generate_password(), true)
    };
    let user = new_user(username, role, &password)?;
    let stores = open_store(&config).await?;
    match stores.identities.create_user(&user).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => anyhow::bail!("the username `{username}` is taken"),
        Err(e) => return Err(e.into()),
    }
    stores
        .identities
        .append_audit(&AuditEvent {
            id: uuid::Uuid::now_v7(),
            at: chrono::Utc::now(),
            action: "user.created".into(),
            principal: Some(mcp_core::principal::subjects::CLI.into()),
            ip: None,
            request_id: None,
            details: serde_json::json!({"user": username, "role": role}),
        })
        .await?;
    println!("created user `{username}` ({role}), id {}", user.id);
    if generated {
        println!("password: {password}");
    }
    Ok(())
}

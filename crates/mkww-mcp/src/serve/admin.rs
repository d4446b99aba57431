//! The first administrator of an embedded server, and the user records the CLI creates.

use crate::config::{Config, Database};
use mcp_core::StoreError;
use mcp_core::credentials;
use mcp_core::identity::{IdentityStore, User};
use mcp_core::principal::Role;

/// On the first start of an embedded server (no users yet), creates `admin` with a generated
/// password and prints the credentials once. A cluster's first admin is made with
/// `mkww-mcp user create`.
pub async fn bootstrap_admin(
    config: &Config,
    identities: &dyn IdentityStore,
) -> anyhow::Result<()> {
    if identities.count_users().await? > 0 {
        return Ok(());
    }
    if !matches!(config.database()?, Database::Sqlite(_)) {
        tracing::warn!(
            "no users yet: create the first admin with `mkww-mcp user create NAME --role admin`"
        );
        return Ok(());
    }
    let password = credentials::generate_password();
    let user = new_user("admin", Role::Admin, &password)?;
    match identities.create_user(&user).await {
        Ok(()) => {
            eprintln!(
                "\n  First start: created the administrator account.\n    username: admin\n    \
                 password: {password}\n  It is shown only now. Log in with POST /v1/auth/login; \
                 change it with PATCH /v1/users/{}.\n",
                user.id
            );
            tracing::warn!(
                username = "admin",
                "created the first administrator account"
            );
            Ok(())
        }
        // Another process made one first.
        Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A user record with `password` hashed.
pub fn new_user(username: &str, role: Role, password: &str) -> anyhow::Result<User> {
    mcp_api::check_username(username).map_err(|e| anyhow::anyhow!(e.message))?;
    let now = chrono::Utc::now();
    Ok(User {
        id: uuid::Uuid::now_v7(),
        username: username.to_owned(),
        role,
        password_hash: credentials::hash_password(password)?,
        disabled: false,
        created_at: now,
        updated_at: now,
    })
}

//! The `IdentityStore` of the PostgreSQL store: users, API keys, refresh tokens, the audit log
//! and daily quotas, in the tables of `migrations/postgres/0003_identity.sql`. Rotation and
//! quota use are single guarded statements, so concurrent nodes cannot both win.

use super::PgTaskStore;
use crate::codec::{count_i64, role, unsigned};
use crate::columns::{API_KEY_COLUMNS, REFRESH_COLUMNS, USER_COLUMNS};
use crate::error::{conflict_or_db_error, db_error};
use crate::identity::{refused_rotation, revocation_target};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use mcp_core::StoreError;
use mcp_core::identity::{
    ApiKey, AuditEvent, AuditFilter, IdentityStore, QuotaUse, RefreshToken, Revocation,
    RevocationTarget, Rotation, User,
};
use mcp_core::principal::Role;
use serde_json::Value;
use sqlx::FromRow;
use sqlx::types::Json;
use uuid::Uuid;

#[derive(FromRow)]
struct UserRow {
    id: Uuid,
    username: String,
    role: String,
    password_hash: String,
    disabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(row: UserRow) -> Result<User, StoreError> {
        Ok(User {
            id: row.id,
            username: row.username,
            role: role(&row.role)?,
            password_hash: row.password_hash,
            disabled: row.disabled,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(FromRow)]
struct RevocationRow {
    kind: String,
    target: String,
    not_before: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
}

impl TryFrom<RevocationRow> for Revocation {
    type Error = StoreError;
    fn try_from(row: RevocationRow) -> Result<Revocation, StoreError> {
        Ok(Revocation {
            target: revocation_target(&row.kind, &row.target)?,
            not_before: row.not_before,
            recorded_at: row.recorded_at,
        })
    }
}

#[derive(FromRow)]
struct ApiKeyRow {
    id: Uuid,
    name: String,
    prefix: String,
    role: String,
    secret_hash: String,
    created_by: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    worker_types: Option<Vec<String>>,
}

impl TryFrom<ApiKeyRow> for ApiKey {
    type Error = StoreError;
    fn try_from(row: ApiKeyRow) -> Result<ApiKey, StoreError> {
        Ok(ApiKey {
            id: row.id,
            name: row.name,
            prefix: row.prefix,
            role: role(&row.role)?,
            secret_hash: row.secret_hash,
            created_by: row.created_by,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
            worker_types: row.worker_types,
        })
    }
}

#[derive(FromRow)]
struct RefreshRow {
    id: Uuid,
    family_id: Uuid,
    user_id: Uuid,
    token_hash: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<RefreshRow> for RefreshToken {
    fn from(row: RefreshRow) -> RefreshToken {
        RefreshToken {
            id: row.id,
            family_id: row.family_id,
            user_id: row.user_id,
            token_hash: row.token_hash,
            created_at: row.created_at,
            expires_at: row.expires_at,
            used_at: row.used_at,
            revoked_at: row.revoked_at,
        }
    }
}

#[derive(FromRow)]
struct AuditRow {
    id: Uuid,
    at: DateTime<Utc>,
    action: String,
    principal: Option<String>,
    ip: Option<String>,
    request_id: Option<String>,
    details: Json<Value>,
}

impl From<AuditRow> for AuditEvent {
    fn from(row: AuditRow) -> AuditEvent {
        AuditEvent {
            id: row.id,
            at: row.at,
            action: row.action,
            principal: row.principal,
            ip: row.ip,
            request_id: row.request_id,
            details: row.details.0,
        }
    }
}

#[async_trait]
impl IdentityStore for PgTaskStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, username, role, password_hash, disabled, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(user.id)
        .bind(&user.username)
        .bind(user.role.as_str())
        .bind(&user.password_hash)
        .bind(user.disabled)
        .bind(user.created_at)
        .bind(user.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_or_db_error(e, || format!("username `{}`", user.username)))?;
        Ok(())
    }

    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> =
            sqlx::query_as(sql!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        row.map(User::try_from).transpose()
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> =
            sqlx::query_as(sql!("SELECT {USER_COLUMNS} FROM users WHERE username = $1"))
                .bind(username)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        row.map(User::try_from).transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        // Byte order, as SQLite sorts, whatever the database's collation.
        let rows: Vec<UserRow> = sqlx::query_as(sql!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username COLLATE \"C\""
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(User::try_from).collect()
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(unsigned(n))
    }

    async fn update_user(
        &self,
        id: Uuid,
        role: Option<Role>,
        disabled: Option<bool>,
        password_hash: Option<&str>,
    ) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> = sqlx::query_as(sql!(
            "UPDATE users SET role = coalesce($2, role), disabled = coalesce($3, disabled),
                 password_hash = coalesce($4, password_hash), updated_at = now()
             WHERE id = $1
             RETURNING {USER_COLUMNS}"
        ))
        .bind(id)
        .bind(role.map(Role::as_str))
        .bind(disabled)
        .bind(password_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.map(User::try_from).transpose()
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, role, secret_hash, created_by, created_at,
                 last_used_at, revoked_at, worker_types)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(key.id)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(key.role.as_str())
        .bind(&key.secret_hash)
        .bind(&key.created_by)
        .bind(key.created_at)
        .bind(key.last_used_at)
        .bind(key.revoked_at)
        .bind(&key.worker_types)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_or_db_error(e, || format!("API key prefix `{}`", key.prefix)))?;
        Ok(())
    }

    async fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<ApiKeyRow> = sqlx::query_as(sql!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE prefix = $1"
        ))
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.map(ApiKey::try_from).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<ApiKeyRow> = sqlx::query_as(sql!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(ApiKey::try_from).collect()
    }

    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<ApiKeyRow> = sqlx::query_as(sql!(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2)
             WHERE id = $1
             RETURNING {API_KEY_COLUMNS}"
        ))
        .bind(id)
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.map(ApiKey::try_from).transpose()
    }

    async fn touch_api_key(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        // Never moves backwards, and writes nothing when a later use is already recorded.
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $2
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(id)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<(), StoreError> {
        insert_refresh(&self.pool, token).await
    }

    async fn rotate_refresh_token(
        &self,
        token_hash: &str,
        next: &RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // The guard is the row lock: a concurrent rotation of the same token waits here, then
        // sees `used_at` set and updates nothing.
        let used: Option<RefreshRow> = sqlx::query_as(sql!(
            "UPDATE refresh_tokens SET used_at = $2
             WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2
             RETURNING {REFRESH_COLUMNS}"
        ))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(used) = used else {
            let token = refresh_token(&mut *tx, token_hash).await?;
            tx.rollback().await.map_err(db_error)?;
            return Ok(refused_rotation(token));
        };
        insert_refresh(&mut *tx, next).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Rotation::Rotated { used: used.into() })
    }

    async fn refresh_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshToken>, StoreError> {
        refresh_token(&self.pool, token_hash).await
    }

    async fn revoke_refresh_family(
        &self,
        family_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family_id)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn revoke_user_refresh_tokens(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn record_revocation(
        &self,
        target: &RevocationTarget,
        not_before: DateTime<Utc>,
    ) -> Result<Revocation, StoreError> {
        // `recorded_at` by the server's clock, so that nodes whose clocks differ still page
        // through the entries in one order.
        let row: RevocationRow = sqlx::query_as(
            "INSERT INTO revocations (kind, target, not_before, recorded_at)
             VALUES ($1, $2, $3, clock_timestamp())
             ON CONFLICT (kind, target) DO UPDATE
                SET not_before = greatest(revocations.not_before, excluded.not_before),
                    recorded_at = excluded.recorded_at
             RETURNING kind, target, not_before, recorded_at",
        )
        .bind(target.kind())
        .bind(target.key())
        .bind(not_before)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Revocation::try_from(row)
    }

    async fn revocations_since(&self, since: DateTime<Utc>) -> Result<Vec<Revocation>, StoreError> {
        let rows: Vec<RevocationRow> = sqlx::query_as(
            "SELECT kind, target, not_before, recorded_at FROM revocations
             WHERE recorded_at >= $1
             ORDER BY recorded_at",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(Revocation::try_from).collect()
    }

    async fn prune_revocations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // `recorded_at` too: a row written again lately (an older cut-off recorded over it) is
        // being read by the other nodes now, and the condition uses its index.
        let done = sqlx::query(
            "DELETE FROM revocations
             WHERE kind IN ('subject', 'session') AND recorded_at < $1 AND not_before < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, action, principal, ip, request_id, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(event.id)
        .bind(event.at)
        .bind(&event.action)
        .bind(event.principal.as_deref())
        .bind(event.ip.as_deref())
        .bind(event.request_id.as_deref())
        .bind(Json(&event.details))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, action, principal, ip, request_id, details FROM audit_log
             WHERE ($1::text IS NULL OR action = $1)
               AND ($2::text IS NULL OR principal = $2)
               AND ($3::uuid IS NULL OR id < $3)
             ORDER BY id DESC
             LIMIT $4",
        )
        .bind(filter.action.as_deref())
        .bind(filter.principal.as_deref())
        .bind(filter.before)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.into_iter().map(AuditEvent::from).collect())
    }

    async fn consume_quota(
        &self,
        subject: &str,
        day: NaiveDate,
        amount: u64,
        limit: u64,
    ) -> Result<QuotaUse, StoreError> {
        // More than the limit is never granted; checked here so that no row is created for it.
        if amount <= limit {
            // One statement: the upsert locks the day's row, and its guard sees the latest count
            // (`used <= limit - amount` cannot overflow, unlike `used + amount <= limit`).
            let granted: Option<(i64,)> = sqlx::query_as(
                "INSERT INTO quotas (subject, day, used) VALUES ($1, $2, $3)
                 ON CONFLICT (subject, day) DO UPDATE SET used = quotas.used + excluded.used
                 WHERE quotas.used <= $4 - excluded.used
                 RETURNING used",
            )
            .bind(subject)
            .bind(day)
            .bind(count_i64(amount))
            .bind(count_i64(limit))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
            if let Some((used,)) = granted {
                return Ok(QuotaUse {
                    granted: true,
                    used: unsigned(used),
                });
            }
        }
        let used: Option<(i64,)> =
            sqlx::query_as("SELECT used FROM quotas WHERE subject = $1 AND day = $2")
                .bind(subject)
                .bind(day)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        Ok(QuotaUse {
            granted: false,
            used: used.map_or(0, |(used,)| unsigned(used)),
        })
    }
}

async fn refresh_token<'e, E>(
    executor: E,
    token_hash: &str,
) -> Result<Option<RefreshToken>, StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    let row: Option<RefreshRow> = sqlx::query_as(sql!(
        "SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(executor)
    .await
    .map_err(db_error)?;
    Ok(row.map(RefreshToken::from))
}

async fn insert_refresh<'e, E>(executor: E, token: &RefreshToken) -> Result<(), StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, created_at, expires_at,
             used_at, revoked_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(token.id)
    .bind(token.family_id)
    .bind(token.user_id)
    .bind(&token.token_hash)
    .bind(token.created_at)
    .bind(token.expires_at)
    .bind(token.used_at)
    .bind(token.revoked_at)
    .execute(executor)
    .await
    .map_err(|e| conflict_or_db_error(e, || "refresh token".to_owned()))?;
    Ok(())
}

//! The `IdentityStore` of the SQLite store, in the tables of `migrations/sqlite/0003_identity.sql`.
//! Every write goes through the one writer connection, so a rotation or a quota use is never
//! interleaved with another write.

use super::SqliteTaskStore;
use crate::codec::{
    count_i64, day_text, id_text, instant, json, json_array, micros, role, unsigned, uuid,
};
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
use sqlx::FromRow;
use uuid::Uuid;

#[derive(FromRow)]
struct UserRow {
    id: String,
    username: String,
    role: String,
    password_hash: String,
    disabled: bool,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(row: UserRow) -> Result<User, StoreError> {
        Ok(User {
            id: uuid(&row.id)?,
            username: row.username,
            role: role(&row.role)?,
            password_hash: row.password_hash,
            disabled: row.disabled,
            created_at: instant(row.created_at)?,
            updated_at: instant(row.updated_at)?,
        })
    }
}

#[derive(FromRow)]
struct RevocationRow {
    kind: String,
    target: String,
    not_before: i64,
    recorded_at: i64,
}

impl TryFrom<RevocationRow> for Revocation {
    type Error = StoreError;
    fn try_from(row: RevocationRow) -> Result<Revocation, StoreError> {
        Ok(Revocation {
            target: revocation_target(&row.kind, &row.target)?,
            not_before: instant(row.not_before)?,
            recorded_at: instant(row.recorded_at)?,
        })
    }
}

#[derive(FromRow)]
struct ApiKeyRow {
    id: String,
    name: String,
    prefix: String,
    role: String,
    secret_hash: String,
    created_by: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    worker_types: Option<String>,
}

impl TryFrom<ApiKeyRow> for ApiKey {
    type Error = StoreError;
    fn try_from(row: ApiKeyRow) -> Result<ApiKey, StoreError> {
        Ok(ApiKey {
            id: uuid(&row.id)?,
            name: row.name,
            prefix: row.prefix,
            role: role(&row.role)?,
            secret_hash: row.secret_hash,
            created_by: row.created_by,
            created_at: instant(row.created_at)?,
            last_used_at: row.last_used_at.map(instant).transpose()?,
            revoked_at: row.revoked_at.map(instant).transpose()?,
            worker_types: row.worker_types.as_deref().map(json).transpose()?,
        })
    }
}

#[derive(FromRow)]
struct RefreshRow {
    id: String,
    family_id: String,
    user_id: String,
    token_hash: String,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TryFrom<RefreshRow> for RefreshToken {
    type Error = StoreError;
    fn try_from(row: RefreshRow) -> Result<RefreshToken, StoreError> {
        Ok(RefreshToken {
            id: uuid(&row.id)?,
            family_id: uuid(&row.family_id)?,
            user_id: uuid(&row.user_id)?,
            token_hash: row.token_hash,
            created_at: instant(row.created_at)?,
            expires_at: instant(row.expires_at)?,
            used_at: row.used_at.map(instant).transpose()?,
            revoked_at: row.revoked_at.map(instant).transpose()?,
        })
    }
}

#[derive(FromRow)]
struct AuditRow {
    id: String,
    at: i64,
    action: String,
    principal: Option<String>,
    ip: Option<String>,
    request_id: Option<String>,
    details: String,
}

impl TryFrom<AuditRow> for AuditEvent {
    type Error = StoreError;
    fn try_from(row: AuditRow) -> Result<AuditEvent, StoreError> {
        Ok(AuditEvent {
            id: uuid(&row.id)?,
            at: instant(row.at)?,
            action: row.action,
            principal: row.principal,
            ip: row.ip,
            request_id: row.request_id,
            details: json(&row.details)?,
        })
    }
}

#[async_trait]
impl IdentityStore for SqliteTaskStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, username, role, password_hash, disabled, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(id_text(user.id))
        .bind(&user.username)
        .bind(user.role.as_str())
        .bind(&user.password_hash)
        .bind(user.disabled)
        .bind(micros(user.created_at))
        .bind(micros(user.updated_at))
        .execute(&self.writer)
        .await
        .map_err(|e| conflict_or_db_error(e, || format!("username `{}`", user.username)))?;
        Ok(())
    }

    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> =
            sqlx::query_as(sql!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
                .bind(id_text(id))
                .fetch_optional(&self.readers)
                .await
                .map_err(db_error)?;
        row.map(User::try_from).transpose()
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> =
            sqlx::query_as(sql!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1"))
                .bind(username)
                .fetch_optional(&self.readers)
                .await
                .map_err(db_error)?;
        row.map(User::try_from).transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows: Vec<UserRow> =
            sqlx::query_as(sql!("SELECT {USER_COLUMNS} FROM users ORDER BY username"))
                .fetch_all(&self.readers)
                .await
                .map_err(db_error)?;
        rows.into_iter().map(User::try_from).collect()
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM users")
            .fetch_one(&self.readers)
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
            "UPDATE users SET role = coalesce(?2, role), disabled = coalesce(?3, disabled),
                 password_hash = coalesce(?4, password_hash), updated_at = ?5
             WHERE id = ?1
             RETURNING {USER_COLUMNS}"
        ))
        .bind(id_text(id))
        .bind(role.map(Role::as_str))
        .bind(disabled)
        .bind(password_hash)
        .bind(micros(Utc::now()))
        .fetch_optional(&self.writer)
        .await
        .map_err(db_error)?;
        row.map(User::try_from).transpose()
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, role, secret_hash, created_by, created_at,
                 last_used_at, revoked_at, worker_types)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(id_text(key.id))
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(key.role.as_str())
        .bind(&key.secret_hash)
        .bind(&key.created_by)
        .bind(micros(key.created_at))
        .bind(key.last_used_at.map(micros))
        .bind(key.revoked_at.map(micros))
        .bind(key.worker_types.clone().map(json_array))
        .execute(&self.writer)
        .await
        .map_err(|e| conflict_or_db_error(e, || format!("API key prefix `{}`", key.prefix)))?;
        Ok(())
    }

    async fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<ApiKeyRow> = sqlx::query_as(sql!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE prefix = ?1"
        ))
        .bind(prefix)
        .fetch_optional(&self.readers)
        .await
        .map_err(db_error)?;
        row.map(ApiKey::try_from).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<ApiKeyRow> = sqlx::query_as(sql!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&self.readers)
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
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2)
             WHERE id = ?1
             RETURNING {API_KEY_COLUMNS}"
        ))
        .bind(id_text(id))
        .bind(micros(at))
        .fetch_optional(&self.writer)
        .await
        .map_err(db_error)?;
        row.map(ApiKey::try_from).transpose()
    }

    async fn touch_api_key(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        // Never moves backwards, and writes nothing when a later use is already recorded.
        sqlx::query(
            "UPDATE api_keys SET last_used_at = ?2
             WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
        )
        .bind(id_text(id))
        .bind(micros(at))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<(), StoreError> {
        insert_refresh(&self.writer, token).await
    }

    async fn rotate_refresh_token(
        &self,
        token_hash: &str,
        next: &RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let used: Option<RefreshRow> = sqlx::query_as(sql!(
            "UPDATE refresh_tokens SET used_at = ?2
             WHERE token_hash = ?1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?2
             RETURNING {REFRESH_COLUMNS}"
        ))
        .bind(token_hash)
        .bind(micros(now))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(used) = used else {
            let token = refresh_token(&mut *tx, token_hash).await?;
            tx.rollback().await.map_err(db_error)?;
            return Ok(refused_rotation(token));
        };
        let used = RefreshToken::try_from(used)?;
        insert_refresh(&mut *tx, next).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Rotation::Rotated { used })
    }

    async fn refresh_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshToken>, StoreError> {
        refresh_token(&self.readers, token_hash).await
    }

    async fn revoke_refresh_family(
        &self,
        family_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = ?2 WHERE family_id = ?1 AND revoked_at IS NULL",
        )
        .bind(id_text(family_id))
        .bind(micros(at))
        .execute(&self.writer)
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
            "UPDATE refresh_tokens SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
        )
        .bind(id_text(user_id))
        .bind(micros(at))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn record_revocation(
        &self,
        target: &RevocationTarget,
        not_before: DateTime<Utc>,
    ) -> Result<Revocation, StoreError> {
        // One process owns the file: the store's clock is this node's.
        let row: RevocationRow = sqlx::query_as(
            "INSERT INTO revocations (kind, target, not_before, recorded_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, target) DO UPDATE
                SET not_before = max(revocations.not_before, excluded.not_before),
                    recorded_at = excluded.recorded_at
             RETURNING kind, target, not_before, recorded_at",
        )
        .bind(target.kind())
        .bind(target.key())
        .bind(micros(not_before))
        .bind(micros(Utc::now()))
        .fetch_one(&self.writer)
        .await
        .map_err(db_error)?;
        Revocation::try_from(row)
    }

    async fn revocations_since(&self, since: DateTime<Utc>) -> Result<Vec<Revocation>, StoreError> {
        let rows: Vec<RevocationRow> = sqlx::query_as(
            "SELECT kind, target, not_before, recorded_at FROM revocations
             WHERE recorded_at >= ?1
             ORDER BY recorded_at",
        )
        .bind(micros(since))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(Revocation::try_from).collect()
    }

    async fn prune_revocations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // `recorded_at` too: a row written again lately (an older cut-off recorded over it) is
        // being read by the other nodes now, and the condition uses its index.
        let done = sqlx::query(
            "DELETE FROM revocations
             WHERE kind IN ('subject', 'session') AND recorded_at < ?1 AND not_before < ?1",
        )
        .bind(micros(before))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, action, principal, ip, request_id, details)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(id_text(event.id))
        .bind(micros(event.at))
        .bind(&event.action)
        .bind(event.principal.as_deref())
        .bind(event.ip.as_deref())
        .bind(event.request_id.as_deref())
        .bind(event.details.to_string())
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, action, principal, ip, request_id, details FROM audit_log
             WHERE (?1 IS NULL OR action = ?1)
               AND (?2 IS NULL OR principal = ?2)
               AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC
             LIMIT ?4",
        )
        .bind(filter.action.as_deref())
        .bind(filter.principal.as_deref())
        .bind(filter.before.map(id_text))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(AuditEvent::try_from).collect()
    }

    async fn consume_quota(
        &self,
        subject: &str,
        day: NaiveDate,
        amount: u64,
        limit: u64,
    ) -> Result<QuotaUse, StoreError> {
        let day = day_text(day);
        // More than the limit is never granted; checked here so that no row is created for it.
        if amount <= limit {
            // `used <= limit - amount` cannot overflow, unlike `used + amount <= limit`.
            let granted: Option<(i64,)> = sqlx::query_as(
                "INSERT INTO quotas (subject, day, used) VALUES (?1, ?2, ?3)
                 ON CONFLICT (subject, day) DO UPDATE SET used = quotas.used + excluded.used
                 WHERE quotas.used <= ?4 - excluded.used
                 RETURNING used",
            )
            .bind(subject)
            .bind(&day)
            .bind(count_i64(amount))
            .bind(count_i64(limit))
            .fetch_optional(&self.writer)
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
            sqlx::query_as("SELECT used FROM quotas WHERE subject = ?1 AND day = ?2")
                .bind(subject)
                .bind(&day)
                .fetch_optional(&self.readers)
                .await
                .map_err(db_error)?;
        Ok(QuotaUse {
            granted: false,
            used: used.map_or(0, |(used,)| unsigned(used)),
        })
    }
}

async fn insert_refresh<'e, E>(executor: E, token: &RefreshToken) -> Result<(), StoreError>
where
    E: sqlx::SqliteExecutor<'e>,
{
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, created_at, expires_at,
             used_at, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(id_text(token.id))
    .bind(id_text(token.family_id))
    .bind(id_text(token.user_id))
    .bind(&token.token_hash)
    .bind(micros(token.created_at))
    .bind(micros(token.expires_at))
    .bind(token.used_at.map(micros))
    .bind(token.revoked_at.map(micros))
    .execute(executor)
    .await
    .map_err(|e| conflict_or_db_error(e, || "refresh token".to_owned()))?;
    Ok(())
}

async fn refresh_token<'e, E>(
    executor: E,
    token_hash: &str,
) -> Result<Option<RefreshToken>, StoreError>
where
    E: sqlx::SqliteExecutor<'e>,
{
    let row: Option<RefreshRow> = sqlx::query_as(sql!(
        "SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = ?1"
    ))
    .bind(token_hash)
    .fetch_optional(executor)
    .await
    .map_err(db_error)?;
    row.map(RefreshToken::try_from).transpose()
}

//! Who may act and what they did: users, API keys, refresh tokens, the audit log and daily
//! quotas, and the `IdentityStore` port that keeps them. Secrets never reach the store in the
//! clear: passwords as argon2id hashes, API key secrets and refresh tokens as SHA-256 digests.

use crate::principal::Role;
use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// A person (or anything that logs in with a password).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    /// argon2id PHC string; never serialized.
    #[serde(skip)]
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A key for a service. The key itself is `mcp_<prefix>_<secret>`; only `prefix` (to find it)
/// and the SHA-256 of the whole key are stored.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// Public, unique: identifies the key in lists and logs.
    pub prefix: String,
    pub role: Role,
    /// Hex SHA-256 of the whole key; never serialized.
    #[serde(skip)]
    pub secret_hash: String,
    /// Subject of the principal that created it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The task types a worker connected with this key may serve: exact names or prefixes
    /// ending in `*` (`render.*`). `null`: every type meant for external workers; `[]`: none.
    /// Types with an in-process handler are never served by workers, whatever this says.
    pub worker_types: Option<Vec<String>>,
}

/// One refresh token. Each login starts a family; each refresh uses the presented token up and
/// adds the next one to the same family, so a token presented twice betrays a theft.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshToken {
    pub id: Uuid,
    pub family_id: Uuid,
    pub user_id: Uuid,
    /// Hex SHA-256 of the opaque token.
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq)]
pub enum Rotation {
    /// The token was fresh: it is now used, and `next` is stored in its family.
    Rotated { used: RefreshToken },
    /// The token had been used before: the caller must revoke the family. Nothing was stored.
    Reused { token: RefreshToken },
    /// The token was revoked (logout or an earlier reuse) or has expired. Nothing was stored.
    Dead { token: RefreshToken },
    /// No such token.
    Unknown,
}

/// A security event, kept in the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditEvent {
    /// UUIDv7: the log is ordered by it.
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// What happened, e.g. `auth.login.failed`, `api_key.created`.
    pub action: String,
    /// Subject of who did it (or tried to), when known.
    pub principal: Option<String>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    /// Anything else worth keeping (never a secret).
    #[schema(value_type = Object)]
    pub details: Value,
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub principal: Option<String>,
    /// Only events older than this id (the previous page's last id).
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// What a revocation reaches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RevocationTarget {
    /// A user's access tokens (by subject, the username) issued no later than the revocation's
    /// `not_before` second: disabling, a role or password change, revoking their sessions.
    Subject(String),
    /// One login session (a refresh token family) and every access token issued in it: logout.
    Session(Uuid),
    /// An API key, for good.
    ApiKey(Uuid),
}

impl RevocationTarget {
    /// The kind as stored: `subject`, `session` or `api_key`.
    pub fn kind(&self) -> &'static str {
        match self {
            RevocationTarget::Subject(_) => "subject",
            RevocationTarget::Session(_) => "session",
            RevocationTarget::ApiKey(_) => "api_key",
        }
    }

    /// The target as stored: the subject, or the id.
    pub fn key(&self) -> String {
        match self {
            RevocationTarget::Subject(subject) => subject.clone(),
            RevocationTarget::Session(id) | RevocationTarget::ApiKey(id) => id.to_string(),
        }
    }

    /// The target from its stored kind and key; `None` when they name nothing known.
    pub fn parse(kind: &str, key: &str) -> Option<RevocationTarget> {
        match kind {
            "subject" => Some(RevocationTarget::Subject(key.to_owned())),
            "session" => Uuid::parse_str(key).ok().map(RevocationTarget::Session),
            "api_key" => Uuid::parse_str(key).ok().map(RevocationTarget::ApiKey),
            _ => None,
        }
    }
}

/// One entry of the deny-list every node caches (see `crate::revocations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub target: RevocationTarget,
    /// Credentials of the target issued at or before this instant are refused.
    pub not_before: DateTime<Utc>,
    /// When the store last wrote the entry, by the store's clock: what `revocations_since`
    /// pages by.
    pub recorded_at: DateTime<Utc>,
}

/// The result of asking for quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUse {
    /// Whether the whole amount was granted (and counted).
    pub granted: bool,
    /// Units used today after this call.
    pub used: u64,
}

#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// Fails with `StoreError::Conflict` when the username is taken.
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;
    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError>;
    async fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError>;
    /// All users, by username.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    async fn count_users(&self) -> Result<u64, StoreError>;
    /// Changes role, disabled flag and/or password hash; `None` leaves a field alone.
    /// Returns the updated user, or `None` when there is no such user.
    async fn update_user(
        &self,
        id: Uuid,
        role: Option<Role>,
        disabled: Option<bool>,
        password_hash: Option<&str>,
    ) -> Result<Option<User>, StoreError>;

    /// Fails with `StoreError::Conflict` when the prefix is taken.
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    async fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKey>, StoreError>;
    /// All keys, revoked ones too, newest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError>;
    /// Marks the key revoked (once). Returns it, or `None` when there is no such key.
    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError>;
    /// Records a use; cheap and best effort.
    async fn touch_api_key(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<(), StoreError>;
    /// Atomically: if the token with `token_hash` is unused, unrevoked and unexpired at `now`,
    /// marks it used and inserts `next` (same family); otherwise stores nothing.
    async fn rotate_refresh_token(
        &self,
        token_hash: &str,
        next: &RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<Rotation, StoreError>;
    async fn refresh_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshToken>, StoreError>;
    /// Revokes every unrevoked token of the family; returns how many.
    async fn revoke_refresh_family(
        &self,
        family_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    /// Revokes every unrevoked token of the user (disabled user, password change).
    async fn revoke_user_refresh_tokens(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Adds `target` to the deny-list, or moves its `not_before` later (never earlier), and
    /// stamps `recorded_at` with the store's clock. Returns the entry as stored.
    async fn record_revocation(
        &self,
        target: &RevocationTarget,
        not_before: DateTime<Utc>,
    ) -> Result<Revocation, StoreError>;
    /// Entries recorded at or after `since`, oldest first.
    async fn revocations_since(&self, since: DateTime<Utc>) -> Result<Vec<Revocation>, StoreError>;
    /// Deletes the `subject` and `session` entries whose `not_before` and `recorded_at` are both
    /// before `before` (they can refuse only tokens that have expired); `api_key` entries stay.
    /// Returns how many were deleted.
    async fn prune_revocations(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;

    /// Atomically adds `amount` to `subject`'s count for `day` if the result stays within
    /// `limit`; otherwise counts nothing. Counts survive restarts.
    async fn consume_quota(
        &self,
        subject: &str,
        day: NaiveDate,
        amount: u64,
        limit: u64,
    ) -> Result<QuotaUse, StoreError>;
}

//! Bearer-token authentication: a token maps to a tenant, an actor and a [`Role`].
//!
//! Tokens are `annals_` + 64 hex characters (see [`TokenStore::create`]); only their SHA-256
//! is stored (table `api_tokens`), so the table never holds a usable credential. Lookups are by hash, one
//! indexed query per request; revocation and expiry take effect on the next request.
//!
//! It lives in `schemas` because it is part of the API-edge contract shared by the command and
//! query services (token format, roles, principal), and `query-api` may not depend on
//! `command-api`. It depends only on sqlx, sha2 and tonic.

use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// What a token may do. Commands need [`Role::Admin`] or [`Role::Service`]; every role may
/// query its tenant's read models; history and integrity checks need
/// [`Role::Admin`] or [`Role::Auditor`] (see [`Role::can_read_history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, including token management through future admin RPCs.
    Admin,
    /// A service sending commands.
    Service,
    /// Reads read models.
    Analyst,
    /// Reads history and verifies integrity.
    Auditor,
    /// Reads read models only.
    Viewer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Service,
        Role::Analyst,
        Role::Auditor,
        Role::Viewer,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Service => "service",
            Role::Analyst => "analyst",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the role may send commands (append events).
    pub fn can_write(self) -> bool {
        matches!(self, Role::Admin | Role::Service)
    }

    /// Whether the role may read raw event history, as-of state and integrity reports.
    pub fn can_read_history(self) -> bool {
        matches!(self, Role::Admin | Role::Auditor)
    }

    /// Whether the role may see personal fields of audit rows (actor, client ip, user agent,
    /// changed field values). Every role but [`Role::Viewer`].
    pub fn sees_personal_fields(self) -> bool {
        !matches!(self, Role::Viewer)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling: the identity behind a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id (never the secret).
    pub token_id: Uuid,
    /// Tenant the caller acts in; every write is stamped with it.
    pub tenant: String,
    /// User or service id.
    pub actor: String,
    /// Kind of actor, e.g. `user`, `service`.
    pub actor_type: String,
    /// What the caller may do.
    pub role: Role,
}

/// Why a request was not authenticated or not authorized. Deliberately coarse: a caller learns
/// nothing about which tokens exist.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer …` header.
    #[error("missing bearer token (send `authorization: Bearer <token>`)")]
    Missing,
    /// Unknown, malformed, revoked or expired token.
    #[error("invalid, revoked or expired token")]
    Invalid,
    /// Valid token whose role may not do this.
    #[error("role {role} may not {action}")]
    Forbidden {
        /// The caller's role.
        role: Role,
        /// What was attempted.
        action: &'static str,
    },
    /// The token table could not be read.
    #[error("token lookup failed: {0}")]
    Database(#[from] sqlx::Error),
}

/// A stored token's description (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Token id.
    pub token_id: Uuid,
    /// Tenant.
    pub tenant: String,
    /// Actor.
    pub actor: String,
    /// Kind of actor.
    pub actor_type: String,
    /// Role.
    pub role: Role,
    /// Free text.
    pub description: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What to create a token for.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Tenant.
    pub tenant: String,
    /// Actor.
    pub actor: String,
    /// Kind of actor.
    pub actor_type: String,
    /// Role.
    pub role: Role,
    /// Free text shown by `token list`.
    pub description: String,
    /// Optional expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Prefix of every token, so that leaked tokens are easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "annals_";

/// Tokens in Postgres (`api_tokens`).
#[derive(Debug, Clone)]
pub struct TokenStore {
    pool: PgPool,
}

type TokenRow = (
    Uuid,
    String,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn info(row: TokenRow) -> Option<TokenInfo> {
    let (token_id, tenant, actor, actor_type, role, description, created_at, expires_at, revoked) =
        row;
    Some(TokenInfo {
        token_id,
        tenant,
        actor,
        actor_type,
        role: Role::parse(&role)?,
        description,
        created_at,
        expires_at,
        revoked_at: revoked,
    })
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenStore {
    /// Tokens stored in `pool` (migrated).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates a token and returns its info and the secret, which is shown exactly once.
    ///
    /// The secret is two UUID v4s from the OS generator (244 random bits), hex encoded.
    pub async fn create(&self, new: &NewToken) -> Result<(TokenInfo, String), AuthError> {
        let mut secret = Vec::with_capacity(32);
        secret.extend_from_slice(Uuid::new_v4().as_bytes());
        secret.extend_from_slice(Uuid::new_v4().as_bytes());
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
        let token_id = Uuid::now_v7();
        let row: TokenRow = sqlx::query_as(
            "INSERT INTO api_tokens \
               (token_id, token_hash, tenant_id, actor, actor_type, role, description, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING token_id, tenant_id, actor, actor_type, role, description, created_at, \
                       expires_at, revoked_at",
        )
        .bind(token_id)
        .bind(hash(&token).as_slice())
        .bind(&new.tenant)
        .bind(&new.actor)
        .bind(&new.actor_type)
        .bind(new.role.as_str())
        .bind(&new.description)
        .bind(new.expires_at)
        .fetch_one(&self.pool)
        .await?;
        let info = info(row).ok_or(AuthError::Invalid)?;
        Ok((info, token))
    }

    /// Every token (optionally of one tenant), newest first.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<TokenInfo>, AuthError> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT token_id, tenant_id, actor, actor_type, role, description, created_at, \
                    expires_at, revoked_at \
               FROM api_tokens WHERE ($1::text IS NULL OR tenant_id = $1) \
              ORDER BY created_at DESC",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(info).collect())
    }

    /// Revokes a token; false when no unrevoked token has that id.
    pub async fn revoke(&self, token_id: Uuid) -> Result<bool, AuthError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL",
        )
        .bind(token_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The principal behind a presented token, if it is known, unrevoked and unexpired.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
            return Err(AuthError::Invalid);
        }
        let row: Option<(Uuid, String, String, String, String)> = sqlx::query_as(
            "SELECT token_id, tenant_id, actor, actor_type, role FROM api_tokens \
              WHERE token_hash = $1 AND revoked_at IS NULL \
                AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(hash(token).as_slice())
        .fetch_optional(&self.pool)
        .await?;
        let (token_id, tenant, actor, actor_type, role) = row.ok_or(AuthError::Invalid)?;
        Ok(Principal {
            token_id,
            tenant,
            actor,
            actor_type,
            role: Role::parse(&role).ok_or(AuthError::Invalid)?,
        })
    }

    /// Authenticates the `authorization` metadata of a gRPC request.
    pub async fn authenticate_request(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, AuthError> {
        let header = metadata
            .get("authorization")
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Invalid)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?;
        self.authenticate(token.trim()).await
    }
}

impl Principal {
    /// Fails unless the principal may send commands.
    pub fn require_write(&self) -> Result<(), AuthError> {
        if self.role.can_write() {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                role: self.role,
                action: "send commands (needs admin or service)",
            })
        }
    }
}

impl Principal {
    /// Fails unless the principal may read event history and verify integrity.
    pub fn require_history(&self) -> Result<(), AuthError> {
        if self.role.can_read_history() {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                role: self.role,
                action: "read event history (needs admin or auditor)",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_only_writers_write() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        let writers: Vec<_> = Role::ALL.into_iter().filter(|r| r.can_write()).collect();
        assert_eq!(writers, [Role::Admin, Role::Service]);
        assert_eq!(Role::parse("root"), None);
    }
}

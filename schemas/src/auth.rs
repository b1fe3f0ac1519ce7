//! Bearer-token authentication: a token maps to a tenant, an actor and a [`Role`].
//!
//! Tokens are `annals_` + 64 hex characters (see [`TokenStore::create`]); only their SHA-256
//! is stored (table `api_tokens`), so the table never holds a usable credential.
//!
//! # Verifying without a round trip: [`TokenCache`]
//!
//! The services authenticate through a [`TokenCache`], which keeps what the database said about
//! a token (keyed by the token's SHA-256, never the secret) for [`TokenCacheConfig::ttl`]
//! (default [`DEFAULT_TOKEN_CACHE_TTL`], 5 s):
//!
//! - **Revocation** is therefore visible within `ttl`: a request that starts authenticating
//!   more than `ttl` after the revocation committed is refused. The clock of an entry starts
//!   *before* its lookup is sent, so a slow lookup never stretches the bound.
//! - **Expiry** is checked on every use against the cached `expires_at`, so an expired token is
//!   refused at once, not up to `ttl` late.
//! - **Unknown, revoked and expired tokens** are remembered too (for `ttl`), so repeating one
//!   costs one lookup per `ttl`; malformed tokens never reach the database. A flood of distinct
//!   well-formed tokens is held to [`TokenCacheConfig::max_concurrent_lookups`] lookups at a
//!   time, so it cannot take the pool from the requests of valid callers.
//! - **Memory is bounded**: at most [`TokenCacheConfig::capacity`] valid and as many refused
//!   entries; a full map first drops stale entries, then the oldest one (valid) or everything
//!   (refused: those entries only save lookups).
//! - **No stampede, no waiting**: a token in use is looked up again in the background once past
//!   half its `ttl`, so busy tokens never make a request wait; when an entry does go stale,
//!   one request per token looks it up and the requests arriving meanwhile wait for that
//!   answer instead of each sending their own.
//!
//! A `ttl` of zero turns the cache off (every request is one indexed lookup).
//!
//! It lives in `schemas` because it is part of the API-edge contract shared by the command and
//! query services (token format, roles, principal), and `query-api` may not depend on
//! `command-api`. It depends only on sqlx, sha2 and tonic.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Verifies a token by hash. Revoked tokens are not returned; expired ones are (with their
/// `expires_at`), so that the cache can refuse them itself at the right moment.
const VERIFY_TOKEN: &str = "SELECT token_id, tenant_id, actor, actor_type, role, expires_at \
                              FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL";

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

/// Hex characters after [`TOKEN_PREFIX`] in every token [`TokenStore::create`] makes.
const TOKEN_HEX_CHARS: usize = 64;

/// Whether `token` has the shape of a token [`TokenStore::create`] makes; anything else is
/// refused without a lookup.
fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == TOKEN_HEX_CHARS && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

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

/// Columns of [`VERIFY_TOKEN`].
type VerifyRow = (Uuid, String, String, String, String, Option<DateTime<Utc>>);

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

    /// The principal behind a presented token, if it is known, unrevoked and unexpired: one
    /// indexed lookup, no caching (see [`TokenCache`] for the services' path).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if !well_formed(token) {
            return Err(AuthError::Invalid);
        }
        match self.verify(&hash(token)).await? {
            Some(v) if v.valid_at(Utc::now()) => Ok(v.principal),
            _ => Err(AuthError::Invalid),
        }
    }

    /// What the table says about a token hash: `None` when unknown or revoked (or with a role
    /// this build does not know).
    async fn verify(&self, token_hash: &[u8; 32]) -> Result<Option<Verified>, AuthError> {
        let row: Option<VerifyRow> = sqlx::query_as(VERIFY_TOKEN)
            .bind(token_hash.as_slice())
            .fetch_optional(&self.pool)
            .await?;
        Ok(
            row.and_then(|(token_id, tenant, actor, actor_type, role, expires_at)| {
                Some(Verified {
                    principal: Principal {
                        token_id,
                        tenant,
                        actor,
                        actor_type,
                        role: Role::parse(&role)?,
                    },
                    expires_at,
                })
            }),
        )
    }

    /// Authenticates the `authorization` metadata of a gRPC request (uncached).
    pub async fn authenticate_request(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, AuthError> {
        self.authenticate(bearer(metadata)?).await
    }
}

/// The bearer token of a gRPC request's `authorization` metadata.
///
/// Exactly one `authorization` header: with two, proxies and servers disagree on which one
/// counts (first, last, joined), so a request carrying two is refused rather than guessed.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    let mut headers = metadata.get_all("authorization").iter();
    let header = headers.next().ok_or(AuthError::Missing)?;
    if headers.next().is_some() {
        return Err(AuthError::Invalid);
    }
    let header = header.to_str().map_err(|_| AuthError::Invalid)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(AuthError::Missing)?;
    Ok(token.trim())
}

/// An unrevoked token as stored.
#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    expires_at: Option<DateTime<Utc>>,
}

impl Verified {
    fn valid_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// Default of [`TokenCacheConfig::ttl`]: the documented revocation delay of the services.
pub const DEFAULT_TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);

/// How [`TokenCache`] trades freshness for round trips (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCacheConfig {
    /// How long a lookup's answer is trusted, i.e. the longest a revoked token keeps working;
    /// zero looks every request up.
    pub ttl: Duration,
    /// Most valid tokens remembered (and, separately, most refused ones).
    pub capacity: usize,
    /// Most lookups in flight at once: what a flood of unknown tokens can take from the pool.
    pub max_concurrent_lookups: usize,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TOKEN_CACHE_TTL,
            capacity: 10_000,
            max_concurrent_lookups: 4,
        }
    }
}

/// Verified tokens in memory, in front of a [`TokenStore`] (see the module docs). Cheap to
/// clone; clones share the cache.
#[derive(Debug, Clone)]
pub struct TokenCache {
    inner: Arc<CacheInner>,
}

#[derive(Debug)]
struct CacheInner {
    store: TokenStore,
    config: TokenCacheConfig,
    entries: Mutex<Entries>,
    lookups: Semaphore,
}

type TokenHash = [u8; 32];

#[derive(Debug, Default)]
struct Entries {
    /// Unrevoked tokens and when their lookup was sent.
    valid: HashMap<TokenHash, (Verified, Instant)>,
    /// Unknown or revoked tokens and when their lookup was sent.
    refused: HashMap<TokenHash, Instant>,
    /// One lock per token being looked up, so that concurrent requests share one lookup.
    inflight: HashMap<TokenHash, Arc<tokio::sync::Mutex<()>>>,
}

/// What the cache knows about a token right now.
enum Cached {
    /// Valid; `due` once past half its ttl, when a background refresh should start.
    Valid {
        principal: Principal,
        due: bool,
    },
    Refused,
    Stale,
}

impl Entries {
    fn get(&self, key: &TokenHash, ttl: Duration, now: Instant) -> Cached {
        if let Some((verified, at)) = self.valid.get(key)
            && now.duration_since(*at) < ttl
        {
            return if verified.valid_at(Utc::now()) {
                Cached::Valid {
                    principal: verified.principal.clone(),
                    due: now.duration_since(*at) >= ttl / 2,
                }
            } else {
                Cached::Refused
            };
        }
        match self.refused.get(key) {
            Some(at) if now.duration_since(*at) < ttl => Cached::Refused,
            _ => Cached::Stale,
        }
    }

    fn put(
        &mut self,
        key: TokenHash,
        found: Option<Verified>,
        at: Instant,
        config: &TokenCacheConfig,
    ) {
        let fresh = |t: &Instant| at.saturating_duration_since(*t) < config.ttl;
        match found {
            Some(verified) => {
                self.refused.remove(&key);
                if self.valid.len() >= config.capacity && !self.valid.contains_key(&key) {
                    self.valid.retain(|_, (_, t)| fresh(t));
                    if self.valid.len() >= config.capacity {
                        let oldest = self
                            .valid
                            .iter()
                            .min_by_key(|(_, (_, t))| *t)
                            .map(|(k, _)| *k);
                        if let Some(oldest) = oldest {
                            self.valid.remove(&oldest);
                        }
                    }
                }
                self.valid.insert(key, (verified, at));
            }
            None => {
                self.valid.remove(&key);
                if self.refused.len() >= config.capacity && !self.refused.contains_key(&key) {
                    self.refused.retain(|_, t| fresh(t));
                    if self.refused.len() >= config.capacity {
                        self.refused.clear();
                    }
                }
                self.refused.insert(key, at);
            }
        }
    }
}

impl TokenCache {
    /// A cache in front of `store`.
    pub fn new(store: TokenStore, config: TokenCacheConfig) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                store,
                lookups: Semaphore::new(config.max_concurrent_lookups.max(1)),
                config,
                entries: Mutex::new(Entries::default()),
            }),
        }
    }

    /// The token store behind the cache (token management goes there directly).
    pub fn store(&self) -> &TokenStore {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &TokenCacheConfig {
        &self.inner.config
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map stays consistent whatever panicked while holding it (every update is one
        // insert or remove), so a poisoned lock is still usable.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The principal behind a presented token, answered from memory while fresh.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let ttl = self.inner.config.ttl;
        if ttl.is_zero() {
            return self.inner.store.authenticate(token).await;
        }
        if !well_formed(token) {
            return Err(AuthError::Invalid);
        }
        let key = hash(token);
        let gate = {
            let mut entries = self.entries();
            match entries.get(&key, ttl, Instant::now()) {
                Cached::Valid { principal, due } => {
                    if due && !entries.inflight.contains_key(&key) {
                        let gate = Arc::clone(entries.inflight.entry(key).or_default());
                        self.refresh_ahead(key, gate);
                    }
                    return Ok(principal);
                }
                Cached::Refused => return Err(AuthError::Invalid),
                Cached::Stale => Arc::clone(entries.inflight.entry(key).or_default()),
            }
        };
        let outcome = {
            let _turn = gate.lock().await;
            // Whoever held the gate before us may have just answered this very token.
            let cached = self.entries().get(&key, ttl, Instant::now());
            match cached {
                Cached::Valid { principal, .. } => Ok(principal),
                Cached::Refused => Err(AuthError::Invalid),
                Cached::Stale => self.look_up(key).await,
            }
        };
        self.leave(key, &gate);
        outcome
    }

    /// Looks a token that is in use up again in the background once past half its ttl, so
    /// that busy tokens never make a request wait for a lookup; requests arriving while it
    /// runs are answered from memory (or, once stale, wait for it at the gate).
    fn refresh_ahead(&self, key: TokenHash, gate: Arc<tokio::sync::Mutex<()>>) {
        let cache = self.clone();
        tokio::spawn(async move {
            {
                let _turn = gate.lock().await;
                if let Err(AuthError::Database(err)) = cache.look_up(key).await {
                    // The entry still expires at its ttl; requests then look it up themselves.
                    tracing::debug!(error = %err, "token refresh failed");
                }
            }
            cache.leave(key, &gate);
        });
    }

    /// Takes the gate down when the caller is the last one through it (the map's clone and
    /// the caller's are all that is left); a request that cloned it meanwhile does it itself.
    fn leave(&self, key: TokenHash, gate: &Arc<tokio::sync::Mutex<()>>) {
        let mut entries = self.entries();
        if Arc::strong_count(gate) <= 2
            && entries
                .inflight
                .get(&key)
                .is_some_and(|g| Arc::ptr_eq(g, gate))
        {
            entries.inflight.remove(&key);
        }
    }

    #[tracing::instrument(name = "auth.token_lookup", skip_all, level = "debug")]
    async fn look_up(&self, key: TokenHash) -> Result<Principal, AuthError> {
        let _permit = self
            .inner
            .lookups
            .acquire()
            .await
            // The semaphore is never closed; should it be, refusing is the safe answer.
            .map_err(|_| AuthError::Invalid)?;
        // Taken before the query is sent: the entry's age bounds the revocation delay even
        // when the lookup is slow.
        let sent = Instant::now();
        let found = self.inner.store.verify(&key).await?;
        let principal = found
            .as_ref()
            .filter(|v| v.valid_at(Utc::now()))
            .map(|v| v.principal.clone());
        self.entries().put(key, found, sent, &self.inner.config);
        principal.ok_or(AuthError::Invalid)
    }

    /// Authenticates the `authorization` metadata of a gRPC request.
    pub async fn authenticate_request(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, AuthError> {
        self.authenticate(bearer(metadata)?).await
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
    fn exactly_one_authorization_header() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert!(matches!(bearer(&m), Err(AuthError::Missing)));
        m.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&m).unwrap(), "abc");
        m.append("authorization", "Bearer def".parse().unwrap());
        assert!(matches!(bearer(&m), Err(AuthError::Invalid)));
    }

    #[test]
    fn roles_round_trip_and_only_writers_write() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        let writers: Vec<_> = Role::ALL.into_iter().filter(|r| r.can_write()).collect();
        assert_eq!(writers, [Role::Admin, Role::Service]);
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn only_the_shape_create_makes_is_well_formed() {
        let good = format!("{TOKEN_PREFIX}{}", "ab".repeat(32));
        assert!(well_formed(&good));
        assert!(!well_formed("annals_deadbeef"));
        assert!(!well_formed(&good.replace("annals_", "other_")));
        assert!(!well_formed(&format!("{good}0")));
        assert!(!well_formed(&format!("{TOKEN_PREFIX}{}", "zz".repeat(32))));
    }

    fn verified(actor: &str) -> Option<Verified> {
        Some(Verified {
            principal: Principal {
                token_id: Uuid::now_v7(),
                tenant: "acme".into(),
                actor: actor.into(),
                actor_type: "service".into(),
                role: Role::Service,
            },
            expires_at: None,
        })
    }

    #[test]
    fn both_maps_stay_within_capacity() {
        let config = TokenCacheConfig {
            ttl: Duration::from_secs(3600),
            capacity: 3,
            max_concurrent_lookups: 1,
        };
        let mut entries = Entries::default();
        let now = Instant::now();
        for i in 0..10u8 {
            let at = now + Duration::from_millis(u64::from(i));
            entries.put([i; 32], verified(&format!("a{i}")), at, &config);
            entries.put([100 + i; 32], None, at, &config);
            assert!(entries.valid.len() <= 3 && entries.refused.len() <= 3);
        }
        // The newest valid tokens survive: the oldest is the one dropped.
        let later = now + Duration::from_secs(1);
        assert!(matches!(
            entries.get(&[9; 32], config.ttl, later),
            Cached::Valid { due: false, .. }
        ));
        assert!(matches!(
            entries.get(&[0; 32], config.ttl, later),
            Cached::Stale
        ));
        assert!(matches!(
            entries.get(&[109; 32], config.ttl, later),
            Cached::Refused
        ));
    }

    async fn token(store: &TokenStore, expires_at: Option<DateTime<Utc>>) -> (Uuid, String) {
        let (info, secret) = store
            .create(&NewToken {
                tenant: "acme".into(),
                actor: "svc".into(),
                actor_type: "service".into(),
                role: Role::Service,
                description: String::new(),
                expires_at,
            })
            .await
            .unwrap();
        (info.token_id, secret)
    }

    fn cache(pool: PgPool, ttl: Duration) -> TokenCache {
        let config = TokenCacheConfig {
            ttl,
            ..TokenCacheConfig::default()
        };
        TokenCache::new(TokenStore::new(pool), config)
    }

    /// Polls until `token` is refused; panics when it still works at `deadline`.
    async fn refused_by(cache: &TokenCache, token: &str, deadline: std::time::Instant) {
        loop {
            match cache.authenticate(token).await {
                Err(AuthError::Invalid) => return,
                Ok(_) => assert!(
                    std::time::Instant::now() < deadline,
                    "token still accepted past its bound"
                ),
                Err(other) => panic!("unexpected {other}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn answers_from_memory_once_verified(pool: PgPool) {
        let cache = cache(pool.clone(), Duration::from_secs(3600));
        let (id, secret) = token(cache.store(), None).await;
        let unknown = format!("{TOKEN_PREFIX}{}", "0f".repeat(32));
        assert_eq!(cache.authenticate(&secret).await.unwrap().token_id, id);
        assert!(matches!(
            cache.authenticate(&unknown).await,
            Err(AuthError::Invalid)
        ));
        // Without a database both answers still come, from memory.
        pool.close().await;
        assert_eq!(cache.authenticate(&secret).await.unwrap().token_id, id);
        assert!(matches!(
            cache.authenticate(&unknown).await,
            Err(AuthError::Invalid)
        ));
        assert!(matches!(
            cache.authenticate("annals_x").await,
            Err(AuthError::Invalid)
        ));
        // A token never seen needs the database, and says so.
        let other = format!("{TOKEN_PREFIX}{}", "1e".repeat(32));
        assert!(matches!(
            cache.authenticate(&other).await,
            Err(AuthError::Database(_))
        ));
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_revoked_token_stops_working_within_the_ttl(pool: PgPool) {
        let ttl = Duration::from_secs(1);
        let cache = cache(pool, ttl);
        let (id, secret) = token(cache.store(), None).await;
        for _ in 0..3 {
            assert_eq!(cache.authenticate(&secret).await.unwrap().token_id, id);
        }
        assert!(cache.store().revoke(id).await.unwrap());
        // The bound runs from the revocation's commit; 2 s of margin for a loaded machine.
        refused_by(
            &cache,
            &secret,
            std::time::Instant::now() + ttl + Duration::from_secs(2),
        )
        .await;
        assert!(matches!(
            cache.authenticate(&secret).await,
            Err(AuthError::Invalid)
        ));
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn expiry_is_checked_on_every_use(pool: PgPool) {
        let cache = cache(pool, Duration::from_secs(3600));
        let expires = Utc::now() + chrono::Duration::seconds(1);
        let (id, secret) = token(cache.store(), Some(expires)).await;
        assert_eq!(cache.authenticate(&secret).await.unwrap().token_id, id);
        // Far inside the hour-long ttl: only the cached `expires_at` can refuse it.
        refused_by(
            &cache,
            &secret,
            std::time::Instant::now() + Duration::from_secs(3),
        )
        .await;
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_token_in_use_is_refreshed_in_the_background(pool: PgPool) {
        let ttl = Duration::from_secs(1);
        let cache = cache(pool, ttl);
        let (id, secret) = token(cache.store(), None).await;
        assert_eq!(cache.authenticate(&secret).await.unwrap().token_id, id);
        let key = hash(&secret);
        let verified_at = |c: &TokenCache| c.entries().valid.get(&key).map(|(_, at)| *at);
        let first = verified_at(&cache).unwrap();
        tokio::time::sleep(ttl / 2).await;
        // Past half the ttl: answered from memory, and a refresh starts behind it.
        assert_eq!(cache.authenticate(&secret).await.unwrap().token_id, id);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while verified_at(&cache) == Some(first) || !cache.entries().inflight.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "no refresh within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(verified_at(&cache).unwrap() > first);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn concurrent_first_uses_agree(pool: PgPool) {
        let cache = cache(pool, Duration::from_secs(3600));
        let (id, secret) = token(cache.store(), None).await;
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (cache, secret) = (cache.clone(), secret.clone());
                tokio::spawn(async move { cache.authenticate(&secret).await.map(|p| p.token_id) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), id);
        }
        assert!(
            cache.entries().inflight.is_empty(),
            "a lookup gate was left behind"
        );
    }
}

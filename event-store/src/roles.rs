//! Who a process is connected as, and getting a service's database ready.
//!
//! annals separates two roles (see the migration `20261202300001_service_role.sql`): the
//! **owner** of the tables runs the migrations and maintenance verbs (projection rebuilds,
//! `rebase-positions`); the **services** connect as a member of `annals_service`, which may
//! append through the store's functions and read, but can never update, delete, truncate or
//! alter what is stored, nor disable a trigger. A service connected as the owner or a superuser
//! would hand every compromised process the power to rewrite history, so
//! [`prepare_service`] refuses that unless the caller explicitly allows it.

use sqlx::{Connection, PgConnection, PgPool};

use crate::{MIGRATOR, StoreError};

/// The database login a pool uses, as far as annals' trust model is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRole {
    /// `current_user` of the connection.
    pub name: String,
    /// The login is a superuser.
    pub superuser: bool,
    /// The login owns (or is a member of the owner of) the `events` table.
    pub owns_event_tables: bool,
}

impl ConnectionRole {
    /// True when this login could rewrite stored history (superuser or table owner).
    pub fn is_privileged(&self) -> bool {
        self.superuser || self.owns_event_tables
    }
}

/// How a service process treats its database at start.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccess {
    /// Run the migrations first over a separate connection with this URL (the owner's).
    pub migrate_url: Option<String>,
    /// Accept a privileged login (owner or superuser) for the service pool. For development;
    /// such a process also applies the migrations itself when `migrate_url` is not given.
    pub allow_owner: bool,
}

/// The role of the pool's login.
pub async fn connection_role(pool: &PgPool) -> Result<ConnectionRole, StoreError> {
    let (name, superuser, owns_event_tables): (String, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, \
                (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                COALESCE(pg_has_role(current_user, \
                    (SELECT relowner FROM pg_class WHERE oid = to_regclass('public.events')), \
                    'MEMBER'), false)",
    )
    .fetch_one(pool)
    .await?;
    Ok(ConnectionRole {
        name,
        superuser,
        owns_event_tables,
    })
}

/// Makes `pool` ready for a service: migrates over `access.migrate_url` when given, refuses a
/// privileged login unless `access.allow_owner`, and checks that the schema is at least the
/// one this build was compiled with. A privileged (allowed) login without `migrate_url`
/// migrates with the pool itself, as a single-user development setup expects.
pub async fn prepare_service(
    pool: &PgPool,
    access: &ServiceAccess,
) -> Result<ConnectionRole, StoreError> {
    if let Some(url) = &access.migrate_url {
        let mut owner = PgConnection::connect(url).await?;
        MIGRATOR.run(&mut owner).await?;
        owner.close().await?;
    }
    let role = connection_role(pool).await?;
    if role.is_privileged() {
        if !access.allow_owner {
            return Err(StoreError::PrivilegedLogin { role: role.name });
        }
        if access.migrate_url.is_none() {
            crate::migrate(pool).await?;
        }
        return Ok(role);
    }
    ensure_schema_current(pool).await?;
    Ok(role)
}

/// Fails with [`StoreError::SchemaBehind`] unless every migration of this build is applied.
pub async fn ensure_schema_current(pool: &PgPool) -> Result<(), StoreError> {
    let required = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let has_table: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    let applied: Option<i64> = if has_table {
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?
    } else {
        None
    };
    let applied = applied.unwrap_or(0);
    if applied < required {
        return Err(StoreError::SchemaBehind { applied, required });
    }
    Ok(())
}

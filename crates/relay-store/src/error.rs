//! [`StoreError`] and the URL redaction used in every message that names a database.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;

/// Error type of every [`Store`](crate::Store) operation.
///
/// Messages never contain database passwords: URLs pass through [`redact_url`] first.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The addressed row (or the parent it refers to, e.g. the tenant of a new secret) does
    /// not exist.
    #[error("not found")]
    NotFound,
    /// A unique key is already taken (tenant name, signing key id, connection id).
    #[error("already exists")]
    Conflict,
    /// Input rejected before it reached the database.
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Any other database error.
    #[error("database error")]
    Database(#[source] DieselError),
    /// No connection could be taken from the pool (usually: opening one failed).
    #[error("no database connection available")]
    Pool(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Waiting for a pooled connection took longer than the pool timeout.
    #[error("timed out waiting for a database connection")]
    PoolTimeout,
    /// [`Store::connect`](crate::Store::connect) could not open the first connection.
    #[error("cannot connect to database {url}")]
    Connect {
        /// The URL with its password replaced by `***`.
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Running the embedded migrations failed.
    #[error("database migration failed")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Hashing a client secret failed.
    #[error("password hashing failed")]
    Hash(#[source] argon2::password_hash::Error),
    /// A blocking task (argon2, SQLite) panicked or was cancelled.
    #[error("background task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl From<DieselError> for StoreError {
    /// Unique violations become [`StoreError::Conflict`] and foreign-key violations
    /// [`StoreError::NotFound`] (the referenced parent is missing); all else is `Database`.
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => Self::Conflict,
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => Self::NotFound,
            DieselError::NotFound => Self::NotFound,
            other => Self::Database(other),
        }
    }
}

impl From<PoolError> for StoreError {
    /// Keeps the backend's connection error itself as the source: deadpool's wrapper repeats
    /// it in both its message and its source, which would print it twice.
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(inner) => Self::Pool(Box::new(inner)),
            other => Self::Pool(Box::new(other)),
        }
    }
}

/// Returns `url` with the password of its user info and any `password=` query parameter
/// replaced by `***`, so it can be logged or shown in errors.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_query(url);
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    // The user info ends at the last '@' before the query, so that an unescaped '/' or '@'
    // inside a password is still treated as part of the password.
    let before_query = rest.find('?').unwrap_or(rest.len());
    let (userinfo_end, host_and_path) = match rest[..before_query].rfind('@') {
        Some(at) => (at, &rest[at..]),
        None => (0, rest),
    };
    let userinfo = &rest[..userinfo_end];
    let redacted_userinfo = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => userinfo.to_owned(),
    };
    format!(
        "{}{}{}",
        &url[..authority_start],
        redacted_userinfo,
        redact_query(host_and_path)
    )
}

fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_owned();
    };
    let params: Vec<String> = tail[q + 1..]
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{}?{}", &tail[..q], params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_password_in_userinfo_and_query() {
        assert_eq!(
            redact_url("postgres://relay:s3cr%40t@db.example:5432/relay"),
            "postgres://relay:***@db.example:5432/relay"
        );
        assert_eq!(
            redact_url("postgres://relay@db/relay?sslmode=disable&password=hunter2"),
            "postgres://relay@db/relay?sslmode=disable&password=***"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(
            redact_url("postgres://u:p/a@ss@db/x"),
            "postgres://u:***@db/x"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/relay/relay.db"),
            "sqlite:///var/lib/relay/relay.db"
        );
        assert_eq!(redact_url("sqlite:relay.db"), "sqlite:relay.db");
    }
}

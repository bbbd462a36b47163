//! The `[database]` section every service shares.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::secret::Secret;

/// `[database]`: exactly one of `url` and `url_file` (a file holding the URL, for
/// PostgreSQL URLs with a password; systemd `LoadCredential` names are resolved).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite:///var/lib/relay/relay.db` or `postgres://user@host/db`.
    #[serde(default)]
    pub url: Option<Secret>,
    #[serde(default)]
    pub url_file: Option<PathBuf>,
}

impl DatabaseConfig {
    /// A configuration holding `url` directly.
    pub fn with_url(url: impl Into<String>) -> Self {
        DatabaseConfig {
            url: Some(Secret::new(url)),
            url_file: None,
        }
    }

    /// The database URL, reading `url_file` if that is how it was given.
    pub fn resolve_url(&self) -> std::io::Result<Secret> {
        match (&self.url, &self.url_file) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(path)) => Secret::from_file(path),
            (None, None) => Err(std::io::Error::other("database.url is not set")),
        }
    }

    /// Checks the section without reading files; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.url, &self.url_file) {
            (None, None) => Err(ConfigError::key("database.url", "set `url` or `url_file`")),
            (Some(_), Some(_)) => Err(ConfigError::key(
                "database.url_file",
                "set only one of `url` and `url_file`: both are in the same file, or both are \
                 set by variables (a `…__DATABASE__URL` or `…__DATABASE__URL_FILE` variable \
                 alone replaces either one from the file)",
            )),
            (Some(url), None) => check_scheme(url.expose()),
            (None, Some(_)) => Ok(()),
        }
    }
}

/// The URL must name a backend the store supports.
pub fn check_scheme(url: &str) -> Result<(), ConfigError> {
    if ["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        Ok(())
    } else {
        Err(ConfigError::key(
            "database.url",
            "must start with sqlite:// or postgres://",
        ))
    }
}

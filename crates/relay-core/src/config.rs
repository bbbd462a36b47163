//! Configuration loading: TOML file, then environment overrides, then typed deserialization.
//!
//! Environment variables named `{prefix}__A__B` set key `a.b` (lower-cased). Values are parsed
//! as TOML values where possible (`30`, `true`, `["a", "b"]`) and taken as strings otherwise,
//! so `RELAY_CONNECTOR__TARGETS__WEB__TIMEOUT=30s` works.
//!
//! `K` and `K_file` (`database.url` and `database.url_file`) are two spellings of one
//! setting: a variable for either replaces both as the file has them, so an image whose
//! file holds a default `url` takes `…__DATABASE__URL_FILE` as written. Both in the file, or
//! both as variables, stays an error for `validate()` to report.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration could not be loaded; every variant names where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    /// An error about one key, for `validate()` functions.
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Loads `T` from an optional TOML file and the environment variables starting with
/// `{env_prefix}__` (for example `RELAY_SERVER`).
pub fn load<T: DeserializeOwned>(path: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError> {
    let text = match path {
        Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?,
        None => String::new(),
    };
    let origin = path.map_or_else(|| "config".to_owned(), |p| p.display().to_string());
    load_from(&text, &origin, env_prefix, std::env::vars())
}

/// Like [`load`] with the file contents and environment given explicitly (for tests and
/// for configs assembled in code).
pub fn load_from<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    env_prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut root: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.message().to_owned(),
        })?;
    let marker = format!("{env_prefix}__");
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&marker))
        .collect();
    overrides.sort();
    let overrides: Vec<(String, Vec<String>, String)> = overrides
        .into_iter()
        .map(|(var, value)| {
            let path = var[marker.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            (var, path, value)
        })
        .collect();
    let env_paths: HashSet<&[String]> = overrides.iter().map(|(_, p, _)| p.as_slice()).collect();
    for (var, path, value) in &overrides {
        if let Some(sibling) = file_sibling(path)
            && !env_paths.contains(sibling.as_slice())
        {
            remove_key(&mut root, &sibling);
        }
        apply_override(&mut root, path, parse_env_value(value)).map_err(|message| {
            ConfigError::Env {
                var: var.clone(),
                message,
            }
        })?;
    }
    let de = toml::Value::Table(root);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Key {
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// `a.k_file` for `a.k` and `a.k` for `a.k_file`: the other spelling of the same setting.
fn file_sibling(path: &[String]) -> Option<Vec<String>> {
    let (last, parents) = path.split_last()?;
    let other = match last.strip_suffix("_file") {
        Some("") => return None,
        Some(base) => base.to_owned(),
        None => format!("{last}_file"),
    };
    let mut sibling = parents.to_vec();
    sibling.push(other);
    Some(sibling)
}

/// Removes `path` from `root` if it is there; a missing table or key is no error.
fn remove_key(root: &mut toml::Table, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut table = root;
    for part in parents {
        match table.get_mut(part) {
            Some(toml::Value::Table(t)) => table = t,
            _ => return,
        }
    }
    table.remove(last);
}

fn parse_env_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn apply_override(
    root: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    if path.iter().any(String::is_empty) {
        return Err("empty key segment".into());
    }
    let mut table = root;
    for part in parents {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{part}` is not a table")),
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// Serde helpers for durations written as `"30s"`, `"5m"`, `"100ms"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a duration like \"30s\": {e}"))
        })
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        listen: Listen,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WithDatabase {
        database: crate::database::DatabaseConfig,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Listen {
        #[serde(default)]
        port: u16,
        #[serde(default, with = "humantime_serde")]
        wait: Option<Duration>,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_values_and_parses_types() {
        let cfg: Sample = load_from(
            "name = \"a\"\n[listen]\nport = 1\n",
            "t.toml",
            "RELAY_X",
            env(&[
                ("RELAY_X__LISTEN__PORT", "8080"),
                ("RELAY_X__LISTEN__WAIT", "30s"),
            ]),
        )
        .expect("loads");
        assert_eq!(cfg.name, "a");
        assert_eq!(cfg.listen.port, 8080);
        assert_eq!(cfg.listen.wait, Some(Duration::from_secs(30)));
    }

    const FILE_WITH_URL: &str = "[database]\nurl = \"sqlite:///var/lib/relay/relay.db\"\n";

    #[test]
    fn env_url_file_replaces_the_files_url() {
        let cfg: WithDatabase = load_from(
            FILE_WITH_URL,
            "server.toml",
            "RELAY_X",
            env(&[("RELAY_X__DATABASE__URL_FILE", "/run/secrets/db-url")]),
        )
        .expect("loads");
        assert!(cfg.database.url.is_none(), "{:?}", cfg.database);
        assert_eq!(
            cfg.database.url_file.as_deref(),
            Some(Path::new("/run/secrets/db-url"))
        );
        cfg.database.validate().expect("one of the two is set");
    }

    #[test]
    fn env_url_replaces_the_files_url_file() {
        let cfg: WithDatabase = load_from(
            "[database]\nurl_file = \"/run/secrets/db-url\"\n",
            "server.toml",
            "RELAY_X",
            env(&[("RELAY_X__DATABASE__URL", "postgres://relay@db/relay")]),
        )
        .expect("loads");
        assert!(cfg.database.url_file.is_none(), "{:?}", cfg.database);
        cfg.database.validate().expect("one of the two is set");
    }

    #[test]
    fn url_and_url_file_both_as_variables_stay_an_error() {
        let cfg: WithDatabase = load_from(
            FILE_WITH_URL,
            "server.toml",
            "RELAY_X",
            env(&[
                ("RELAY_X__DATABASE__URL", "postgres://relay@db/relay"),
                ("RELAY_X__DATABASE__URL_FILE", "/run/secrets/db-url"),
            ]),
        )
        .expect("loads");
        let err = cfg.database.validate().expect_err("both set");
        assert!(err.to_string().contains("database.url_file"), "{err}");
        assert!(err.to_string().contains("only one of"), "{err}");
    }

    #[test]
    fn url_and_url_file_both_in_the_file_stay_an_error() {
        let cfg: WithDatabase = load_from(
            "[database]\nurl = \"sqlite://a.db\"\nurl_file = \"/run/secrets/db-url\"\n",
            "server.toml",
            "RELAY_X",
            env(&[]),
        )
        .expect("loads");
        let err = cfg.database.validate().expect_err("both set");
        assert!(err.to_string().contains("database.url_file"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_from::<Sample>(
            "name = \"a\"\n[listen]\nprot = 1\n",
            "t.toml",
            "R",
            env(&[]),
        )
        .expect_err("rejects");
        let text = err.to_string();
        assert!(text.contains("listen"), "{text}");
        assert!(text.contains("prot"), "{text}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = load_from::<Sample>(
            "name = \"a\"\n[listen]\nport = \"x\"\n",
            "t.toml",
            "R",
            env(&[]),
        )
        .expect_err("rejects");
        assert!(err.to_string().contains("listen.port"), "{err}");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err = load_from::<Sample>("name = ", "conn.toml", "R", env(&[])).expect_err("rejects");
        assert!(err.to_string().contains("conn.toml"), "{err}");
    }
}

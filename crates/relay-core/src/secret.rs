//! Secrets: never printed, preferably read from files.

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret string whose `Debug` and `Display` print a mask.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Reads a secret file, trimming one trailing newline. Relative paths are resolved
    /// against `$CREDENTIALS_DIRECTORY` when systemd set it and the file exists there.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let resolved = resolve_credential(path);
        let text = std::fs::read_to_string(&resolved).map_err(|e| {
            std::io::Error::new(e.kind(), format!("reading {}: {e}", resolved.display()))
        })?;
        Ok(Secret(text.trim_end_matches(['\n', '\r']).to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn resolve_credential(path: &Path) -> PathBuf {
    if path.is_relative()
        && let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY")
    {
        let candidate = Path::new(&dir).join(path);
        if candidate.exists() {
            return candidate;
        }
    }
    path.to_owned()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
        assert_eq!(s.expose(), "hunter2");
    }
}

//! Private files: the SQLite database (which holds signing keys), body files and secrets are
//! created `0600` in `0700` directories, whatever the process umask, and existing ones that
//! group or others can read are named in a warning at start.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` and its missing parents with mode `0700`.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `path` empty with mode `0600` unless it exists (an existing file is left as it is).
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Options that create a new file with mode `0600` (truncating an existing one).
pub fn private_write_options() -> tokio::fs::OpenOptions {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    options
}

/// Whether group or others have any access to `path` (`None` when it does not exist).
pub fn exposed(path: &Path) -> Option<bool> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    Some(mode & 0o077 != 0)
}

/// Logs a warning for each of `paths` that group or others can access.
pub fn warn_if_exposed<'a>(what: &str, paths: impl IntoIterator<Item = &'a Path>) {
    for path in paths {
        if exposed(path) == Some(true) {
            tracing::warn!(path = %path.display(), "The {what} is readable by other users; restrict it (chmod 600 files, 700 directories).");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_whatever_exists() {
        let dir = std::env::temp_dir().join(format!("relay-files-{}", std::process::id()));
        let nested = dir.join("a").join("b");
        create_private_dir(&nested).expect("dir");
        let file = nested.join("f");
        create_private_file(&file).expect("file");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(exposed(&file), Some(false));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(exposed(&file), Some(true));
        create_private_file(&file).expect("existing file is fine");
        assert_eq!(mode(&file), 0o644, "left as it is");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

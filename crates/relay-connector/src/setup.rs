//! `relay-connector setup NAME`: writes one instance of the packaged template unit
//! `relay-connector@NAME.service` — `NAME.toml` and a mode 0600 `NAME.secret` in
//! `/etc/relay-connector` — and checks them the way `check-config` does.
//!
//! Nothing is written unless the whole configuration validates, and existing files are only
//! replaced with `force`. Each file is written to a temporary name in the same directory
//! and renamed into place, so a failure never leaves half a file.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use relay_core::config::ConfigError;

use crate::config::{Config, ENV_PREFIX};

/// Where the packaged unit looks for `NAME.toml` and `NAME.secret`.
pub const DEFAULT_DIR: &str = "/etc/relay-connector";

/// The unit runs as the dynamic user `relay-connector-NAME`; systemd allows user names of
/// at most 31 characters.
pub const MAX_INSTANCE_NAME: usize = 31 - "relay-connector-".len();

/// An instance name the packaged unit can run: letters, digits, '_' and '-', short enough
/// for its user name.
pub fn is_valid_instance_name(name: &str) -> bool {
    name.len() <= MAX_INSTANCE_NAME && relay_proto::is_valid_tenant_name(name)
}

/// What to write.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Instance name: `NAME.toml`, `NAME.secret`, `relay-connector@NAME.service`.
    pub name: String,
    pub relay_urls: Vec<String>,
    /// Defaults to the instance name.
    pub tenant: Option<String>,
    /// `(name, url)` pairs.
    pub targets: Vec<(String, String)>,
    pub dir: PathBuf,
    /// Replace existing files.
    pub force: bool,
}

/// The files written.
#[derive(Debug)]
pub struct Written {
    pub config: PathBuf,
    pub secret: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "instance name `{0}`: must be 1-{MAX_INSTANCE_NAME} letters, digits, '_' or '-' (it names {0}.toml, relay-connector@{0}.service and its user relay-connector-{0}, which systemd limits to 31 characters); a longer tenant goes in --tenant"
    )]
    Name(String),
    #[error("--target `{0}`: expected NAME=URL")]
    Target(String),
    #[error("{option}: {message}")]
    Invalid { option: String, message: String },
    #[error(
        "no secret on standard input (pipe it in: `relayctl secret create TENANT | relay-connector-setup NAME …`)"
    )]
    NoSecret,
    #[error("the secret on standard input must be a single line")]
    MultiLineSecret,
    #[error("reading the secret from standard input")]
    Stdin(#[source] std::io::Error),
    #[error("{} exists; pass --force to replace it", .0.display())]
    Exists(PathBuf),
    #[error("{} is not UTF-8", .0.display())]
    NotUtf8(PathBuf),
    #[error("writing {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checking the written configuration")]
    Check(#[source] ConfigError),
}

/// Checked and ready to write: [`plan`] found the configuration valid and no file in the way.
#[derive(Debug)]
pub struct Plan {
    dir: PathBuf,
    config_path: PathBuf,
    secret_path: PathBuf,
    text: String,
}

/// Validates `setup` as the connector will read it, and checks that nothing would be
/// overwritten (unless `force`). Writes nothing.
pub fn plan(setup: &Setup) -> Result<Plan, SetupError> {
    if !is_valid_instance_name(&setup.name) {
        return Err(SetupError::Name(setup.name.clone()));
    }
    let dir = if setup.dir.is_absolute() {
        setup.dir.clone()
    } else {
        std::env::current_dir()
            .map_err(|source| SetupError::Write {
                path: setup.dir.clone(),
                source,
            })?
            .join(&setup.dir)
    };
    let config_path = dir.join(format!("{}.toml", setup.name));
    let secret_path = dir.join(format!("{}.secret", setup.name));
    let text = render(setup, &secret_path)?;
    // Without this shell's RELAY_CONNECTOR__ variables: the unit does not have them.
    let config: Config =
        relay_core::config::load_from(&text, &config_path.display().to_string(), ENV_PREFIX, [])
            .map_err(invalid)?;
    config.validate().map_err(invalid)?;
    if !setup.force {
        for path in [&config_path, &secret_path] {
            if path.exists() {
                return Err(SetupError::Exists(path.clone()));
            }
        }
    }
    Ok(Plan {
        dir,
        config_path,
        secret_path,
        text,
    })
}

impl Plan {
    /// Reads the secret from `secret_input`, writes both files and checks them as
    /// `check-config` does.
    pub fn write(self, secret_input: impl Read) -> Result<Written, SetupError> {
        let secret = read_secret(secret_input)?;
        std::fs::create_dir_all(&self.dir).map_err(|source| SetupError::Write {
            path: self.dir.clone(),
            source,
        })?;
        write_file(&self.secret_path, format!("{secret}\n").as_bytes(), 0o600)?;
        write_file(&self.config_path, self.text.as_bytes(), 0o644)?;

        let written = Config::load(Some(&self.config_path)).map_err(SetupError::Check)?;
        written.read_secret().map_err(SetupError::Check)?;
        Ok(Written {
            config: self.config_path,
            secret: self.secret_path,
        })
    }
}

/// Names the command-line option behind a configuration key.
fn invalid(e: ConfigError) -> SetupError {
    match e {
        ConfigError::Key { key, message } => {
            let option = if key == "relay_url" {
                "--relay-url".to_owned()
            } else if key == "tenant" {
                "--tenant".to_owned()
            } else if let Some(rest) = key.strip_prefix("targets.") {
                format!("--target {}=…", rest.strip_suffix(".url").unwrap_or(rest))
            } else {
                key
            };
            SetupError::Invalid { option, message }
        }
        other => SetupError::Invalid {
            option: "configuration".to_owned(),
            message: other.to_string(),
        },
    }
}

fn read_secret(mut input: impl Read) -> Result<String, SetupError> {
    let mut raw = String::new();
    input.read_to_string(&mut raw).map_err(SetupError::Stdin)?;
    let secret = raw.trim();
    if secret.is_empty() {
        return Err(SetupError::NoSecret);
    }
    if secret.contains(['\n', '\r']) {
        return Err(SetupError::MultiLineSecret);
    }
    Ok(secret.to_owned())
}

/// The instance's TOML: only what the options give, with pointers to the rest.
fn render(setup: &Setup, secret_path: &Path) -> Result<String, SetupError> {
    let name = &setup.name;
    let tenant = setup.tenant.as_deref().unwrap_or(name);
    let secret_file = secret_path
        .to_str()
        .ok_or_else(|| SetupError::NotUtf8(secret_path.to_owned()))?;
    let relay_url = match setup.relay_urls.as_slice() {
        [one] => quote(one),
        many => format!(
            "[{}]",
            many.iter().map(|u| quote(u)).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut text = format!(
        "# relay-connector instance `{name}`, written by `relay-connector setup`. Edit freely, then\n\
         # `systemctl restart relay-connector@{name}`. Every key: /etc/relay-connector/example.toml.\n\
         \n\
         relay_url = {relay_url}\n\
         tenant = {tenant}\n\
         # relay-connector@{name}.service passes this file as its credential `secret` and points\n\
         # the connector at that copy; the path here serves `relay-connector check-config`.\n\
         secret_file = {secret_file}\n",
        tenant = quote(tenant),
        secret_file = quote(secret_file),
    );
    for (target, url) in &setup.targets {
        text.push_str(&format!(
            "\n[targets.{}]\nurl = {}\n",
            key(target),
            quote(url)
        ));
    }
    Ok(text)
}

/// `--target name=url`.
pub fn parse_target(arg: &str) -> Result<(String, String), SetupError> {
    match arg.split_once('=') {
        Some((name, url)) if !name.is_empty() && !url.is_empty() => {
            Ok((name.to_owned(), url.to_owned()))
        }
        _ => Err(SetupError::Target(arg.to_owned())),
    }
}

/// A TOML key: bare where TOML allows it (a target name may hold a '.').
fn key(s: &str) -> String {
    let bare = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { s.to_owned() } else { quote(s) }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `path` with `mode` through a temporary file renamed into place.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), SetupError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let fail = |source| SetupError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    let result = file
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_toml_strings() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("x\ny"), r#""x\u000Ay""#);
        assert_eq!(key("web-1"), "web-1");
        assert_eq!(key("erp.lan"), r#""erp.lan""#);
    }

    #[test]
    fn targets_need_a_name_and_a_url() {
        assert_eq!(
            parse_target("web=http://a:1/x=y").ok(),
            Some(("web".to_owned(), "http://a:1/x=y".to_owned()))
        );
        assert!(parse_target("web").is_err());
        assert!(parse_target("=http://a").is_err());
    }

    #[test]
    fn secrets_are_one_trimmed_line() {
        assert_eq!(
            read_secret(&b"s3cret\n"[..]).ok().as_deref(),
            Some("s3cret")
        );
        assert!(matches!(read_secret(&b"\n"[..]), Err(SetupError::NoSecret)));
        assert!(matches!(
            read_secret(&b"a\nb\n"[..]),
            Err(SetupError::MultiLineSecret)
        ));
    }
}

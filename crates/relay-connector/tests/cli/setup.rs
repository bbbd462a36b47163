//! `relay-connector setup NAME`: the files an operator gets, run as the real binary into a
//! temporary directory (`--config-dir`) instead of /etc/relay-connector.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::BIN;

/// A fresh, empty directory for one test.
fn scratch(label: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "relay-connector-setup-{label}-{}-{nanos}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `relay-connector setup ARGS --config-dir DIR` with `stdin` as its standard input.
fn setup(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("setup")
        .args(args)
        .arg("--config-dir")
        .arg(dir)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    // A setup that fails before it reads the secret closes its end early.
    if let Err(e) = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
    {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing stdin: {e}"
        );
    }
    child.wait_with_output().expect("exits")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn setup_writes_a_checked_config_and_a_private_secret() {
    let dir = scratch("ok");
    let output = setup(
        &dir,
        &[
            "acme",
            "--relay-url",
            "https://relay1.example.com",
            "--relay-url",
            "http://relay2.example.com:5000",
            "--target",
            "web=http://127.0.0.1:8080/base",
            "--target",
            "erp.lan=http://erp.lan:8000/api",
        ],
        "s3cret\n",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("systemctl enable --now relay-connector@acme"),
        "{stdout}"
    );

    let (toml, secret) = (dir.join("acme.toml"), dir.join("acme.secret"));
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret"),
        "s3cret\n"
    );
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(mode(&toml), 0o644);
    let text = std::fs::read_to_string(&toml).expect("config");
    assert!(!text.contains("s3cret"), "{text}");

    // What the operator (and the unit) get from it.
    let config = relay_connector::Config::load(Some(&toml)).expect("valid config");
    assert_eq!(
        config.relay_url.as_slice(),
        [
            "https://relay1.example.com",
            "http://relay2.example.com:5000"
        ]
    );
    assert_eq!(config.tenant, "acme");
    assert_eq!(config.secret_file.as_deref(), Some(secret.as_path()));
    assert_eq!(config.targets["web"].url, "http://127.0.0.1:8080/base");
    assert_eq!(config.targets["erp.lan"].url, "http://erp.lan:8000/api");
    let check = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&toml)
        .output()
        .expect("runs");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn setup_replaces_files_only_with_force() {
    let dir = scratch("force");
    let first = setup(
        &dir,
        &[
            "plant7",
            "--tenant",
            "acme",
            "--relay-url",
            "http://relay:5000",
        ],
        "first\n",
    );
    assert!(first.status.success(), "{first:?}");
    let secret = dir.join("plant7.secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let again = setup(
        &dir,
        &["plant7", "--relay-url", "http://relay:5000"],
        "second\n",
    );
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("plant7.toml exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&secret).expect("secret"), "first\n");

    let forced = setup(
        &dir,
        &["plant7", "--relay-url", "http://relay:5000", "--force"],
        "second\n",
    );
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret"),
        "second\n"
    );
    assert_eq!(mode(&secret), 0o600);
    let config = relay_connector::Config::load(Some(&dir.join("plant7.toml"))).expect("valid");
    assert_eq!(config.tenant, "plant7");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn setup_names_a_bad_url_and_writes_nothing() {
    let dir = scratch("bad");
    for (args, named) in [
        (
            &["acme", "--relay-url", "ftp://relay.example.com"][..],
            "--relay-url: `ftp://relay.example.com` must start with http:// or https://",
        ),
        (
            &[
                "acme",
                "--relay-url",
                "http://relay",
                "--target",
                "web=erp:80",
            ][..],
            "--target web=…: `erp:80`",
        ),
        (
            &["acme", "--relay-url", "http://relay", "--target", "web"][..],
            "--target `web`: expected NAME=URL",
        ),
        (
            &["../acme", "--relay-url", "http://relay"][..],
            "instance name `../acme`",
        ),
        (
            // 16 characters: relay-connector-customer-plant7 would be 32, over systemd's 31.
            &["customer-plant7x", "--relay-url", "http://relay"][..],
            "instance name `customer-plant7x`: must be 1-15 letters",
        ),
    ] {
        let output = setup(&dir, args, "s3cret\n");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    let empty = setup(&dir, &["acme", "--relay-url", "http://relay"], "");
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(stderr.contains("no secret on standard input"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

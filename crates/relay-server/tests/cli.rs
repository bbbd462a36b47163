//! The `relay-server` binary's command line.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_relay-server");

#[test]
fn prints_its_version() {
    let output = Command::new(BIN).arg("--version").output().expect("runs");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_accepts_the_example_and_rejects_unknown_keys() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/server.toml");
    let output = Command::new(BIN)
        .args(["check-config", "--config", example])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = Command::new(BIN)
        .args(["check-config"])
        .env("RELAY_SERVER__DATABASE__URL", "sqlite:///tmp/x.db")
        .env("RELAY_SERVER__RELAY__NO_SUCH_KEY", "1")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_key"));
}

#[test]
fn check_config_wants_a_certificate_for_the_in_process_token_service_over_tls() {
    let output = Command::new(BIN)
        .args(["check-config"])
        .env("RELAY_SERVER__DATABASE__URL", "sqlite:///tmp/x.db")
        .env("RELAY_SERVER__LISTEN__IDENTITY", "127.0.0.1:5002")
        .env("RELAY_SERVER__LISTEN__IDENTITY_TLS", "true")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listen.identity_tls"), "{stderr}");
    assert!(stderr.contains("[tls]"), "{stderr}");
}

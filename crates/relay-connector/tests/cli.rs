//! The `relay-connector` binary's command line, and the systemd unit it is packaged with.

#[path = "cli/setup.rs"]
mod setup;
#[path = "cli/unit.rs"]
mod unit;

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_relay-connector");

#[test]
fn check_config_validates_without_connecting() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/connector.toml");
    let output = Command::new(BIN)
        .args(["check-config", "--config", example])
        .env("RELAY_CONNECTOR__SECRET_FILE", "/dev/null")
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The example's secret file does not exist here: named in the error.
    let output = Command::new(BIN)
        .args(["check-config", "--config", example])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("secret_file"), "{stderr}");
}

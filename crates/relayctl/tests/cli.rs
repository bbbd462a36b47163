//! Runs the real `relayctl` binary against a temporary SQLite database.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

/// A temporary directory (removed on drop) holding the test database.
struct TempDb {
    dir: PathBuf,
    url: String,
}

impl TempDb {
    fn new(test: &str) -> TempDb {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("relayctl-{test}-{}-{nanos}", std::process::id()));
        let url = format!("sqlite://{}", dir.join("relay.db").display());
        TempDb { dir, url }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_relayctl"))
            .env_remove("RELAY_DATABASE_URL")
            .arg("--database-url")
            .arg(&self.url)
            .args(args)
            .output()
            .expect("start relayctl")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

#[tokio::test]
async fn tenant_and_secret_lifecycle() {
    let db = TempDb::new("lifecycle");
    let migrate = db.run(&["migrate"]);
    assert_exit(&migrate, 0);
    assert_eq!(stdout(&migrate), "Database is up to date.\n");

    let create = db.run(&["tenant", "create", "acme", "--display-name", "Acme Corp"]);
    assert_exit(&create, 0);
    assert!(stdout(&create).starts_with("Created tenant 'acme' with id "));

    let duplicate = db.run(&["tenant", "create", "ACME"]);
    assert_exit(&duplicate, 6);
    assert_eq!(
        stderr(&duplicate),
        "error: creating tenant 'ACME': already exists\n"
    );

    let secret = db.run(&["secret", "create", "acme", "--expires", "30d"]);
    assert_exit(&secret, 0);
    let out = stdout(&secret);
    let plaintext = out.lines().last().expect("a line with the secret");
    assert_eq!(plaintext.len(), 43, "{out}");
    assert!(
        plaintext
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert!(
        stderr(&secret).contains("shown only once"),
        "{}",
        stderr(&secret)
    );

    // The printed secret is the one stored, for the tenant given in any case.
    let store = relay_store::Store::connect(&db.url)
        .await
        .expect("open database");
    let tenant = store
        .verify_secret("Acme", plaintext, relay_store::now_ms(), None)
        .await
        .expect("verify");
    assert_eq!(tenant.map(|t| t.tenant.name).as_deref(), Some("acme"));

    let list = db.run(&["tenant", "list"]);
    assert_exit(&list, 0);
    let list = stdout(&list);
    assert!(
        list.lines().next().is_some_and(|h| h.starts_with("NAME")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("acme ") && l.ends_with("Acme Corp")),
        "{list}"
    );

    let show = db.run(&["tenant", "show", "ACME"]);
    assert_exit(&show, 0);
    assert!(
        stdout(&show).contains("secrets:       1 active, 0 revoked or expired"),
        "{}",
        stdout(&show)
    );

    let secrets = db.run(&["secret", "list", "acme"]);
    assert_exit(&secrets, 0);
    let secrets = stdout(&secrets);
    let id = secrets
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a secret row");
    assert!(
        !secrets.contains(plaintext),
        "the list never shows the secret"
    );

    assert_exit(&db.run(&["secret", "revoke", "acme", id]), 0);
    assert!(stdout(&db.run(&["secret", "list", "acme"])).contains(" revoked "));
    assert_eq!(
        store
            .verify_secret("acme", plaintext, relay_store::now_ms(), None)
            .await
            .expect("verify"),
        None
    );
}

#[test]
fn not_found_and_usage_errors() {
    let db = TempDb::new("errors");
    let show = db.run(&["tenant", "show", "nobody"]);
    assert_exit(&show, 3);
    assert_eq!(stderr(&show), "error: tenant 'nobody': not found\n");

    assert_exit(&db.run(&["secret", "create", "nobody"]), 3);
    assert_exit(&db.run(&["tenant", "create", "acme"]), 0);
    assert_exit(&db.run(&["secret", "revoke", "acme", "no-such-id"]), 3);

    assert_exit(&db.run(&["tenant", "create", "bad name"]), 2);
    assert_exit(
        &db.run(&["secret", "create", "acme", "--expires", "soon"]),
        2,
    );
    assert_exit(&db.run(&["tenant"]), 2);

    let no_url = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .env_remove("RELAY_DATABASE_URL")
        .args(["tenant", "list"])
        .output()
        .expect("start relayctl");
    assert_exit(&no_url, 2);
    assert!(stderr(&no_url).contains("RELAY_DATABASE_URL"));
}

#[test]
fn database_url_from_environment() {
    let db = TempDb::new("env");
    let out = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .env("RELAY_DATABASE_URL", &db.url)
        .args(["tenant", "list"])
        .output()
        .expect("start relayctl");
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "NAME  ID  CREATED  DISPLAY NAME\n");
}

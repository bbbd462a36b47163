//! PostgreSQL over TLS, against a throw-away server started from the installed PostgreSQL
//! binaries with `ssl = on` and only `hostssl` connections allowed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relay_store::Store;
use relay_testkit::tls::TestCa;

use crate::harness::{error_chain, temp_dir_path};

/// A PostgreSQL server in a temporary directory, stopped when dropped.
struct TlsPostgres {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of `initdb` and `postgres`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn postgres_bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// PostgreSQL refuses to run as root: as root, run it as the `postgres` user.
fn as_server_user(bin: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin);
        command
    } else {
        Command::new(bin)
    }
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn chown_to_server_user(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown -R postgres {}", path.display());
    }
}

fn start(ca: &TestCa, dir: &Path) -> Result<TlsPostgres, String> {
    let bin = postgres_bin_dir().ok_or("no PostgreSQL server binaries (initdb) installed")?;
    let data = dir.join("data");
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    chown_to_server_user(dir);
    let init = as_server_user(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !init.status.success() {
        return Err(format!("initdb: {}", String::from_utf8_lossy(&init.stderr)));
    }
    let (cert, key) = (data.join("server.crt"), data.join("server.key"));
    ca.issue(&cert, &key, "postgres");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    // TLS or nothing: a plain connection is refused by pg_hba.conf.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .map_err(|e| e.to_string())?;
    chown_to_server_user(dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = as_server_user(&bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "ssl=on", "-c"])
        .arg(format!("unix_socket_directories={}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("postgres: {e}"))?;
    let server = TlsPostgres {
        child,
        dir: dir.to_owned(),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("the throw-away PostgreSQL did not start within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(server)
}

#[tokio::test]
async fn postgres_over_tls_verifies_the_server_certificate() {
    let dir = temp_dir_path();
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca = TestCa::new(&dir);
    let server = match start(&ca, &dir.join("pg")) {
        Ok(server) => server,
        Err(reason) => {
            let message = format!(
                "cannot start a throw-away PostgreSQL ({reason}); install the PostgreSQL server \
                 package (initdb, postgres)"
            );
            if std::env::var("RELAY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("{message} (required because RELAY_REQUIRE_POSTGRES=1)");
            }
            eprintln!("SKIPPED: {message}");
            return;
        }
    };
    let base = format!("postgres://postgres@localhost:{}/postgres", server.port);
    let deadline = Instant::now() + Duration::from_secs(30);

    // Plain connections are refused by the server (hostssl only): TLS is what gets us in.
    // The port opens before the server accepts sessions ("the database system is starting
    // up"): wait, with a deadline, until it answers for real.
    let plain = loop {
        let refused = Store::connect(&base).await.expect_err("plain is refused");
        if !error_chain(&refused).contains("starting up") || Instant::now() > deadline {
            break refused;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        error_chain(&plain).contains("no encryption"),
        "{}",
        error_chain(&plain)
    );

    // TLS against a CA the client does not trust: refused by the client.
    let untrusted = Store::connect(&format!("{base}?sslmode=require"))
        .await
        .expect_err("unknown CA");
    assert!(
        error_chain(&untrusted).contains("certificate"),
        "{}",
        error_chain(&untrusted)
    );

    let url = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        ca.ca_file.display()
    );
    let store = loop {
        match Store::connect(&url).await {
            Ok(store) => break store,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for PostgreSQL: {}", error_chain(&e));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("TLS connection failed: {}", error_chain(&e)),
        }
    };
    store.migrate().await.expect("migrate over TLS");
    store
        .create_tenant(relay_store::NewTenant {
            name: "acme".into(),
            display_name: None,
            description: None,
        })
        .await
        .expect("write over TLS");
    assert_eq!(store.list_tenants().await.expect("read over TLS").len(), 1);
    drop(store);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

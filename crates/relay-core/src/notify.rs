//! systemd `Type=notify` support: `READY=1`, `STATUS=…`, `WATCHDOG=1` and `STOPPING=1`
//! sent as datagrams to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset, so services call them
//! unconditionally. Send errors are logged at DEBUG once per message and otherwise ignored:
//! a lost notification must never stop a service.
//!
//! How a service uses it:
//! - after its listeners are bound and its database and broker answered: [`ready`];
//! - whenever its state changes, or periodically: [`status`] with a line a person reads in
//!   `systemctl status`;
//! - once at start, on the main runtime: [`spawn_watchdog`] (does nothing unless
//!   `WATCHDOG_USEC` is set for this process);
//! - [`stopping`] is sent by [`crate::lifecycle::shutdown_on_signal`] on SIGTERM/SIGINT.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The notification socket of this process, resolved once from the environment.
struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

fn notifier() -> Option<&'static Notifier> {
    static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
    NOTIFIER
        .get_or_init(|| {
            let path = std::env::var_os("NOTIFY_SOCKET")?;
            let addr = match parse_addr(path.as_encoded_bytes()) {
                Ok(addr) => addr,
                Err(e) => {
                    tracing::warn!(error = %e, "NOTIFY_SOCKET is not a usable address; not notifying systemd.");
                    return None;
                }
            };
            match UnixDatagram::unbound() {
                Ok(socket) => Some(Notifier { socket, addr }),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot create the systemd notification socket.");
                    None
                }
            }
        })
        .as_ref()
}

fn parse_addr(raw: &[u8]) -> std::io::Result<SocketAddr> {
    match raw.split_first() {
        Some((b'@', name)) => abstract_addr(name),
        Some((b'/', _)) => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::path::Path::new(std::ffi::OsStr::from_bytes(raw)))
        }
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "expected an absolute path or @name",
        )),
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket addresses exist only on Linux",
    ))
}

/// Sends one raw notification (`KEY=VALUE` lines). No-op without `NOTIFY_SOCKET`.
pub fn send(message: &str) {
    if let Some(n) = notifier()
        && let Err(e) = n.socket.send_to_addr(message.as_bytes(), &n.addr)
    {
        tracing::debug!(error = %e, "systemd notification not delivered.");
    }
}

/// `READY=1`: the service is serving. Call after listeners are bound and dependencies answered.
pub fn ready() {
    send("READY=1");
}

/// `STATUS=…`: one line for `systemctl status`. Newlines are replaced by spaces.
pub fn status(line: &str) {
    send(&format!("STATUS={}", line.replace('\n', " ")));
}

/// `READY=1` and `STATUS=…` in one datagram, so systemd never shows "ready" without a status.
pub fn ready_with_status(line: &str) {
    send(&format!("READY=1\nSTATUS={}", line.replace('\n', " ")));
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    send("STOPPING=1");
}

/// The watchdog interval systemd expects for this process (`WATCHDOG_USEC`, honouring
/// `WATCHDOG_PID` when set), or `None` when the watchdog is off.
pub fn watchdog_timeout() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Spawns the watchdog task on the current runtime: `WATCHDOG=1` every half of
/// `WATCHDOG_USEC` until `shutdown`. Because the pings come from a task of the service's own
/// runtime, a stuck event loop stops them and systemd restarts the service. Returns `false`
/// when no watchdog is configured (or there is no notification socket).
pub fn spawn_watchdog(shutdown: CancellationToken) -> bool {
    let Some(timeout) = watchdog_timeout() else {
        return false;
    };
    if notifier().is_none() {
        return false;
    }
    let period = (timeout / 2).max(Duration::from_millis(10));
    tracing::debug!(?period, "systemd watchdog enabled.");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => send("WATCHDOG=1"),
                () = shutdown.cancelled() => return,
            }
        }
    });
    true
}

/// Sends `STATUS=` with the line `render` returns every `period` (and once at once) until
/// `shutdown`. For status lines that change with load, such as a connection count.
pub fn spawn_status(
    period: Duration,
    shutdown: CancellationToken,
    render: impl Fn() -> String + Send + 'static,
) {
    if notifier().is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = String::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let line = render();
            if line != last {
                status(&line);
                last = line;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_abstract_names() {
        assert!(parse_addr(b"/run/systemd/notify").is_ok());
        assert!(parse_addr(b"relative").is_err());
        assert!(parse_addr(b"").is_err());
        #[cfg(target_os = "linux")]
        {
            let addr = parse_addr(b"@relay-test").expect("abstract");
            use std::os::linux::net::SocketAddrExt;
            assert_eq!(addr.as_abstract_name(), Some(&b"relay-test"[..]));
        }
    }

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("relay-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).expect("bind");
        let addr = parse_addr(path.as_os_str().as_encoded_bytes()).expect("addr");
        let client = UnixDatagram::unbound().expect("socket");
        client.send_to_addr(b"READY=1", &addr).expect("send");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Child processes (killed when dropped, output kept in a log file), the scratch directory,
//! where the workspace binaries are, and `/proc` probes for memory and CPU time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The relay binaries this benchmark starts.
pub struct Binaries {
    pub server: PathBuf,
    pub connector: PathBuf,
    pub relayctl: PathBuf,
    /// Only needed by the cross-node scenario, which is skipped without it.
    pub identity: Option<PathBuf>,
}

impl Binaries {
    /// Finds the binaries in `dir`, by default the directory of this executable
    /// (`target/release/` under `cargo run --release`).
    pub fn locate(dir: Option<&Path>) -> anyhow::Result<Binaries> {
        let dir = match dir {
            Some(dir) => dir.to_owned(),
            None => std::env::current_exe()
                .context("locating the relay-bench executable")?
                .parent()
                .context("relay-bench executable has no parent directory")?
                .to_owned(),
        };
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{} not found; build the binaries first: cargo build --release --workspace \
                     (or pass --bin-dir)",
                    path.display()
                )
            }
        };
        Ok(Binaries {
            server: find("relay-server")?,
            connector: find("relay-connector")?,
            relayctl: find("relayctl")?,
            identity: Some(dir.join("relay-identity")).filter(|p| p.is_file()),
        })
    }
}

/// A private temporary directory, removed on drop unless asked to keep it.
pub struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub fn new(keep: bool) -> anyhow::Result<Scratch> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("relay-bench-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept scratch directory {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process, SIGKILLed when dropped; stderr (and stdout unless the caller captured
/// it) goes to `<log_dir>/<name>.log`.
pub struct Service {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Service {
    /// Spawns `command` with stderr going to the log file. With `piped`, stdin and stdout
    /// are pipes the caller talks through; otherwise stdin is null and stdout goes to the log.
    pub fn spawn(
        name: &'static str,
        mut command: Command,
        log_dir: &Path,
        piped: bool,
    ) -> anyhow::Result<Service> {
        let log = log_dir.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        if piped {
            command.stdin(Stdio::piped()).stdout(Stdio::piped());
        } else {
            let copy = file
                .try_clone()
                .context("duplicating the log file handle")?;
            command.stdin(Stdio::null()).stdout(Stdio::from(copy));
        }
        command
            .stderr(Stdio::from(file))
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Service { name, child, log })
    }

    /// Re-executes this binary with `args` (a hidden helper subcommand such as `target`) and
    /// waits up to `wait` for the first line it prints, which is returned trimmed. The helper
    /// exits when its stdin closes (see [`parent_gone`]).
    pub async fn spawn_helper(
        name: &'static str,
        args: &[&str],
        log_dir: &Path,
        wait: Duration,
    ) -> anyhow::Result<(Service, String)> {
        let exe = std::env::current_exe().context("locating the relay-bench executable")?;
        let mut command = Command::new(exe);
        command.args(args);
        let mut service = Service::spawn(name, command, log_dir, true)?;
        let stdout = service
            .child
            .stdout
            .take()
            .with_context(|| format!("{name} stdout is not captured"))?;
        let mut first = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut first);
        match tokio::time::timeout(wait, read).await {
            Ok(Ok(n)) if n > 0 => Ok((service, first.trim().to_owned())),
            Ok(_) => bail!("{name} exited before it was ready:\n{}", service.log_tail()),
            Err(_) => bail!("{name} was not ready within {wait:?}"),
        }
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} has exited", self.name))
    }

    /// Fails, with the end of its log, when the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            ),
            Err(e) => Err(e).with_context(|| format!("checking on {}", self.name)),
        }
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        let pid = self.pid()?;
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }

    /// SIGKILLs and reaps the process, so it is gone when the benchmark exits (dropping only
    /// sends the signal).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The last 20 lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Resident (`VmRSS`) and peak resident (`VmHWM`) memory of a process.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// `/proc/PID/stat` counts in USER_HZ, which Linux fixes at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// A process whose CPU time is sampled around each measurement.
#[derive(Debug, Clone)]
pub struct Probe {
    pub label: &'static str,
    stat: String,
}

impl Probe {
    /// This process (the load generator).
    pub fn own(label: &'static str) -> Probe {
        Probe {
            label,
            stat: "/proc/self/stat".into(),
        }
    }

    pub fn child(label: &'static str, service: &Service) -> anyhow::Result<Probe> {
        Ok(Probe {
            label,
            stat: format!("/proc/{}/stat", service.pid()?),
        })
    }

    /// The local RabbitMQ server (an Erlang VM whose command line names `rabbit`), when it
    /// runs on this machine and is visible in `/proc`.
    pub fn rabbitmq(label: &'static str) -> Option<Probe> {
        let entries = std::fs::read_dir("/proc").ok()?;
        entries.flatten().find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let rabbit = comm.trim() == "beam.smp"
                && cmdline.windows(b"rabbit".len()).any(|w| w == b"rabbit");
            rabbit.then(|| Probe {
                label,
                stat: format!("/proc/{pid}/stat"),
            })
        })
    }

    /// User + system CPU seconds so far; None when the process is gone.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(&self.stat).ok()?;
        // Fields after the parenthesised command name, which may contain spaces: state is
        // field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / TICKS_PER_SECOND)
    }
}

/// Number of CPUs this process may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}

/// The 1, 5 and 15 minute load averages (`0.52 0.31 0.20`): whether the machine was busy with
/// other work.
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Completes when stdin reaches end-of-file: the benchmark that started this helper process
/// (`target`, `bus-echo`) is gone, even if it was killed and could not kill the helper.
pub async fn parent_gone() {
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = gone_tx.send(());
    });
    let _ = gone_rx.await;
}

//! Command-line flags, and the size and duration notations they accept.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::target::TargetArgs;

/// Measures the relay against direct access: throughput, latency, memory.
///
/// Build first: `cargo build --release -p relay-bench -p relay-server -p relay-connector -p relayctl -p relay-identity`,
/// then run `target/release/relay-bench`. Takes about (warm-up + duration) x 4 plus a few
/// seconds of start-up.
#[derive(Debug, Parser)]
#[command(
    name = "relay-bench",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub bench: BenchArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve /small and /large until stdin closes (started by the benchmark itself).
    #[command(hide = true)]
    Target(TargetArgs),
    /// Answer the broker-ceiling row's requests until stdin closes (started by the benchmark).
    #[command(hide = true)]
    BusEcho(crate::broker::EchoArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Measured time per scenario and path, e.g. 10s or 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Unmeasured time before each measurement (connections opened, caches warm).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Connections of the small-request scenario.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub connections: u16,

    /// Connections of the large-download scenario.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub large_connections: u16,

    /// Body size of the large-download scenario, e.g. 10MiB, 512KiB or 1048576.
    #[arg(long, default_value = "10MiB", value_parser = parse_size)]
    pub large_size: u64,

    /// Run only these scenarios (comma-separated: small, large, token-flood).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub scenarios: Vec<String>,

    /// Directory holding relay-server, relay-connector and relayctl; default: next to this binary.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// rathole binary for the competitor rows (a TCP tunnel from the same target to a public
    /// port); default: `rathole` on PATH, skipped with a note when there is none.
    #[arg(long, value_name = "PATH", env = "RELAY_BENCH_RATHOLE")]
    pub rathole: Option<PathBuf>,

    /// Cross-node rows (client on node A, connector on node B; PostgreSQL + RabbitMQ):
    /// `auto` runs them when both services are reachable, `on` (or a bare `--cross-node`)
    /// requires them, `off` skips them.
    #[arg(long, value_enum, default_value = "auto", num_args = 0..=1, default_missing_value = "on")]
    pub cross_node: CrossNode,

    /// Admin URL of the PostgreSQL server the cross-node rows create a database on.
    #[arg(
        long,
        env = "RELAY_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub postgres_url: String,

    /// RabbitMQ of the cross-node rows.
    #[arg(
        long,
        env = "RELAY_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Keep the scratch directory (configs, database, process logs) for inspection.
    #[arg(long)]
    pub keep_temp: bool,

    /// Also print the figures as JSON after the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CrossNode {
    Auto,
    On,
    Off,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be positive".into());
    }
    Ok(d)
}

/// Largest accepted body size: the target holds it in memory once.
const MAX_SIZE: u64 = 1 << 30;

/// Parses `10MiB`, `10 MiB`, `512KiB`, `1GiB`, `10MB` (decimal), `100B` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit `{other}`; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    let bytes = number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes == 0 || bytes > MAX_SIZE {
        return Err(format!("`{s}` must be between 1 B and 1 GiB"));
    }
    Ok(bytes)
}

/// `100 B`, `512 KiB`, `10 MiB`, `1.5 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, factor) in UNITS {
        if bytes >= factor {
            return if bytes.is_multiple_of(factor) {
                format!("{} {unit}", bytes / factor)
            } else {
                format!("{:.1} {unit}", bytes as f64 / factor as f64)
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("512kib"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("0").is_err());
        assert!(parse_size("2GiB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("10 parsecs").is_err());
    }

    #[test]
    fn sizes_format_in_the_largest_whole_unit() {
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(10 << 20), "10 MiB");
        assert_eq!(format_size(3 << 19), "1.5 MiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
    }
}

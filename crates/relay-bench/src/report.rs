//! The printed figures: one table row per scenario and path, memory, the targets with
//! PASS/MISS, any errors; and the same as JSON.

use serde_json::{Value, json};

use crate::cli::{BenchArgs, format_size};
use crate::load::Outcome;
use crate::procs::Memory;
use crate::scenario::{BROKER, CROSS_NODE, DIRECT, LARGE, RATHOLE, RELAY, SMALL};

/// Server and connector memory before and after the load.
pub struct MemoryFigures {
    pub server_idle: Memory,
    pub server_after: Memory,
    pub connector_idle: Memory,
    pub connector_after: Memory,
}

/// A goal from the issue, judged against this run.
struct Goal {
    goal: String,
    measured: Option<String>,
    pass: Option<bool>,
    note: Option<String>,
}

pub struct Report {
    host: String,
    duration_s: f64,
    warmup_s: f64,
    results: Vec<Outcome>,
    memory: MemoryFigures,
    goals: Vec<Goal>,
    /// Why there are no cross-node rows, when there are none.
    /// Why optional rows (rathole, cross-node) are missing.
    pub notes: Vec<String>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report {
    pub fn new(
        args: &BenchArgs,
        results: Vec<Outcome>,
        memory: MemoryFigures,
        host: String,
    ) -> Report {
        let mut report = Report {
            host,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            results,
            memory,
            goals: Vec::new(),
            notes: Vec::new(),
        };
        report.goals = report.judge(args);
        report
    }

    fn find(&self, name: &str, path: &str) -> Option<&Outcome> {
        self.results
            .iter()
            .find(|o| o.scenario.name == name && o.scenario.path == path)
    }

    /// Relay/direct requests-per-second ratio of `outcome`; None for the baseline itself.
    fn ratio(&self, outcome: &Outcome) -> Option<f64> {
        if outcome.scenario.path == DIRECT {
            return None;
        }
        let direct = self.find(&outcome.scenario.name, DIRECT)?;
        (direct.requests > 0).then(|| outcome.requests_per_second() / direct.requests_per_second())
    }

    fn judge(&self, args: &BenchArgs) -> Vec<Goal> {
        let with_errors = |outcomes: &[Option<&Outcome>]| {
            outcomes
                .iter()
                .flatten()
                .any(|o| o.errors.total() > 0)
                .then(|| "run had errors".to_owned())
        };
        let small_relay = self.find(SMALL, RELAY);
        let large_relay = self.find(LARGE, RELAY);
        let ratio = small_relay.and_then(|o| self.ratio(o));
        let p99 = small_relay.and_then(|o| o.latency_ms(0.99));
        let server_idle = mib(self.memory.server_idle.rss_kib);
        let small_cross = self.find(SMALL, CROSS_NODE);
        let cross_ratio = small_cross
            .zip(small_relay)
            .filter(|(_, relay)| relay.requests > 0)
            .map(|(cross, relay)| cross.requests_per_second() / relay.requests_per_second());
        let mut goals = vec![
            Goal {
                goal: "small-request relay throughput >= 40% of direct".into(),
                measured: ratio.map(|r| format!("{:.1}%", 100.0 * r)),
                pass: ratio.map(|r| r >= 0.40),
                note: with_errors(&[small_relay, self.find(SMALL, DIRECT)]),
            },
            Goal {
                goal: format!(
                    "{} downloads through the relay >= 1 GiB/s",
                    format_size(args.large_size)
                ),
                measured: large_relay.map(|o| format!("{:.0} MiB/s", o.mib_per_second())),
                pass: large_relay.map(|o| o.mib_per_second() >= 1024.0),
                note: with_errors(&[large_relay]),
            },
            Goal {
                goal: "small-request relay p99 < 7 ms at 64 connections".into(),
                measured: p99.map(|p| format!("{p:.2} ms")),
                pass: p99.map(|p| p < 7.0),
                note: small_relay
                    .filter(|o| o.scenario.connections != 64)
                    .map(|o| format!("measured at {} connections", o.scenario.connections))
                    .or_else(|| with_errors(&[small_relay])),
            },
            Goal {
                goal: "server idle RSS < 16 MiB".into(),
                measured: Some(format!("{server_idle:.1} MiB")),
                pass: Some(server_idle < 16.0),
                note: None,
            },
        ];
        if let Some(rathole) = self.find(SMALL, RATHOLE) {
            let versus = small_relay
                .filter(|_| rathole.requests > 0)
                .map(|relay| relay.requests_per_second() / rathole.requests_per_second());
            goals.insert(
                1,
                Goal {
                    goal: "small-request relay throughput >= rathole's (same run)".into(),
                    measured: versus.map(|r| format!("{:.1}%", 100.0 * r)),
                    pass: versus.map(|r| r >= 1.0),
                    note: with_errors(&[small_relay, Some(rathole)]),
                },
            );
        }
        if small_cross.is_some() {
            goals.push(Goal {
                goal: "cross-node small-request throughput >= 50% of single-node (relay)".into(),
                measured: cross_ratio.map(|r| format!("{:.1}%", 100.0 * r)),
                pass: cross_ratio.map(|r| r >= 0.50),
                note: with_errors(&[small_cross, small_relay]),
            });
        }
        if let Some(broker) = self.find(SMALL, BROKER) {
            // Not a goal of the issue: how much of what the broker alone sustains on this
            // machine the cross-node relay reaches, and the single-node relay against it.
            let of_broker = |o: Option<&Outcome>| {
                o.filter(|_| broker.requests > 0)
                    .map(|o| o.requests_per_second() / broker.requests_per_second())
            };
            let (cross, single) = (of_broker(small_cross), of_broker(small_relay));
            goals.push(Goal {
                goal: "broker ceiling: cross-node / single-node as % of bus round trips".into(),
                measured: cross
                    .zip(single)
                    .map(|(c, s)| format!("{:.0}% / {:.0}%", 100.0 * c, 100.0 * s)),
                pass: None,
                note: with_errors(&[Some(broker)]).or_else(|| {
                    Some(format!(
                        "{:.0} round trips/s over RabbitMQ alone",
                        broker.requests_per_second()
                    ))
                }),
            });
        }
        goals
    }

    pub fn print(&self) {
        let cpu_labels: Vec<&str> = self
            .results
            .first()
            .map(|o| o.cpu.iter().map(|(label, _)| *label).collect())
            .unwrap_or_default();
        let mut rows = vec![vec![
            "scenario".to_owned(),
            "path".into(),
            "conns".into(),
            "body".into(),
            "req/s".into(),
            "MiB/s".into(),
            "p50 ms".into(),
            "p99 ms".into(),
            "max ms".into(),
            "vs direct".into(),
            "errors".into(),
            format!("cpu% {}", cpu_labels.join("/")),
        ]];
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        for o in &self.results {
            // Rows probing other processes (cross-node) name them.
            let named = o.cpu.iter().map(|(l, _)| *l).ne(cpu_labels.iter().copied());
            let cpu: Vec<String> = o
                .cpu
                .iter()
                .map(|(label, c)| {
                    let value = c.map_or_else(|| "?".to_owned(), |c| format!("{c:.0}"));
                    if named {
                        format!("{label} {value}")
                    } else {
                        value
                    }
                })
                .collect();
            rows.push(vec![
                o.scenario.name.clone(),
                o.scenario.path.clone(),
                o.scenario.connections.to_string(),
                format_size(o.scenario.body_size),
                format!("{:.0}", o.requests_per_second()),
                format!("{:.1}", o.mib_per_second()),
                ms(o.latency_ms(0.50)),
                ms(o.latency_ms(0.99)),
                ms(o.latency_ms(1.0)),
                self.ratio(o)
                    .map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", 100.0 * r)),
                o.errors.total().to_string(),
                cpu.join("/"),
            ]);
        }
        println!();
        println!(
            "relay-bench: {}s measured after {}s warm-up per row; cpu% = percent of one core",
            self.duration_s, self.warmup_s
        );
        println!("host: {}", self.host);
        print_table(&rows, "ll");
        for note in &self.notes {
            println!("{note}");
        }

        let m = &self.memory;
        println!();
        println!(
            "memory (MiB): server idle RSS {:.1}, peak RSS {:.1}, RSS after load {:.1}; \
             connector idle RSS {:.1}, peak RSS {:.1}, RSS after load {:.1}",
            mib(m.server_idle.rss_kib),
            mib(m.server_after.hwm_kib),
            mib(m.server_after.rss_kib),
            mib(m.connector_idle.rss_kib),
            mib(m.connector_after.hwm_kib),
            mib(m.connector_after.rss_kib),
        );

        println!();
        println!("targets from the issue (informational):");
        let mut rows = vec![vec![
            "target".to_owned(),
            "measured".into(),
            "verdict".into(),
            String::new(),
        ]];
        for g in &self.goals {
            rows.push(vec![
                g.goal.clone(),
                g.measured.clone().unwrap_or_else(|| "n/a".into()),
                match g.pass {
                    Some(true) => "PASS".into(),
                    Some(false) => "MISS".into(),
                    None if g.measured.is_some() => "info".into(),
                    None => "n/a".into(),
                },
                g.note.clone().unwrap_or_default(),
            ]);
        }
        print_table(&rows, "lrll");

        println!();
        let total: u64 = self.results.iter().map(|o| o.errors.total()).sum();
        if total == 0 {
            println!("errors: none");
        } else {
            println!("ERRORS: this run had {total} failed requests; its figures are suspect:");
            for o in self.results.iter().filter(|o| o.errors.total() > 0) {
                println!(
                    "  {}/{}: {} (first: {})",
                    o.scenario.name,
                    o.scenario.path,
                    o.errors.summary(),
                    o.errors.first.as_deref().unwrap_or("-")
                );
            }
        }
        for o in self.results.iter().filter(|o| o.warmup_errors > 0) {
            println!(
                "note: {}/{} had {} failed requests during warm-up (not counted above)",
                o.scenario.name, o.scenario.path, o.warmup_errors
            );
        }
        for o in self
            .results
            .iter()
            .filter(|o| o.connects > u64::from(o.scenario.connections))
        {
            println!(
                "note: {}/{} opened {} connections for {} workers (broken connections were replaced)",
                o.scenario.name, o.scenario.path, o.connects, o.scenario.connections
            );
        }
    }

    pub fn to_json(&self) -> Value {
        let results: Vec<Value> = self
            .results
            .iter()
            .map(|o| {
                json!({
                    "scenario": o.scenario.name,
                    "path": o.scenario.path,
                    "url": o.scenario.url.to_string(),
                    "connections": o.scenario.connections,
                    "body_bytes": o.scenario.body_size,
                    "elapsed_s": o.elapsed.as_secs_f64(),
                    "requests": o.requests,
                    "bytes": o.bytes,
                    "requests_per_s": o.requests_per_second(),
                    "mib_per_s": o.mib_per_second(),
                    "latency_ms": {
                        "p50": o.latency_ms(0.50),
                        "p99": o.latency_ms(0.99),
                        "max": o.latency_ms(1.0),
                    },
                    "vs_direct": self.ratio(o),
                    "errors": o.errors,
                    "errors_total": o.errors.total(),
                    "warmup_errors": o.warmup_errors,
                    "connects": o.connects,
                    "cpu_percent": o.cpu.iter().map(|(l, c)| (l.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        let goals: Vec<Value> = self
            .goals
            .iter()
            .map(|g| json!({"target": g.goal, "measured": g.measured, "pass": g.pass, "note": g.note}))
            .collect();
        let m = &self.memory;
        json!({
            "host": self.host,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "results": results,
            "memory_kib": {
                "server": {"idle_rss": m.server_idle.rss_kib, "peak_rss": m.server_after.hwm_kib, "rss_after": m.server_after.rss_kib},
                "connector": {"idle_rss": m.connector_idle.rss_kib, "peak_rss": m.connector_after.hwm_kib, "rss_after": m.connector_after.rss_kib},
            },
            "targets": goals,
            "skipped": self.notes,
            "errors_total": self.results.iter().map(|o| o.errors.total()).sum::<u64>(),
        })
    }
}

/// Prints rows with aligned columns; `align` has one `l` or `r` per column (missing: `r`).
fn print_table(rows: &[Vec<String>], align: &str) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| match align.as_bytes().get(i) {
                Some(b'l') => format!("{cell:<w$}"),
                _ => format!("{cell:>w$}"),
            })
            .collect();
        println!("  {}", cells.join("  ").trim_end());
    }
}

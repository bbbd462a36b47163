//! `relay-bench`: what the relay costs compared with talking to the target directly.
//!
//! One run starts, as separate processes, a lean HTTP/1.1 target (this binary re-executed with
//! the hidden `target` subcommand, so its CPU is not the load generator's), a monolithic
//! `relay-server` on a fresh SQLite database (prepared with `relayctl`) and a `relay-connector`
//! for tenant `bench` whose target `web` is that server. Each scenario is then measured twice,
//! direct to the target and through `/relay/bench/web/...`:
//!
//! - **small**: `GET /small` (100 B answers) on `--connections` keep-alive connections;
//! - **large**: `GET /large` (`--large-size` answers) on `--large-connections` connections.
//!
//! The load generator runs in this process: exactly N HTTP/1.1 connections, each a loop of
//! sequential requests (closed loop, no pacing). After `--warmup`, for `--duration`, it records
//! every completed request's latency (request sent to last body byte), the bytes received and
//! every failure (connect or transport error, non-2xx status, body of the wrong length). Per
//! scenario it prints requests/s, MiB/s, p50/p99/max latency, the relay/direct throughput ratio
//! and the CPU each process used (percent of one core, from `/proc/PID/stat`). Memory is the
//! server's and connector's `VmRSS` after start-up (idle, connector attached, before load) and
//! `VmHWM` (peak) after all scenarios. Finally the targets are shown with PASS/MISS;
//! they are informational and do not change the exit code.
//!
//! With PostgreSQL and RabbitMQ reachable (`--cross-node auto`, the default), two more rows:
//! **cross-node** (load on node A of a two-node cluster whose only connector is on node B)
//! and, beside the small one, **broker**: the same message pattern over `relay-bus` alone
//! (see [`broker`]), the ceiling the cross-node row is read against. Their CPU columns include
//! RabbitMQ when it runs on this machine. With rathole (on `PATH` or `--rathole`), rathole
//! rows as the competitor.
//!
//! Everything shares one machine, so the figures say as much about the host's cores as about
//! the relay; the CPU columns show who was busy.
//!
//! **token-flood** (see [`tokenflood`]): a real client's token latency while 64 connections
//! flood a separate `relay-identity` with random client ids, and that service's memory before,
//! at the peak and after. `--scenarios token-flood` runs only this row.
//!
//! Modules: [`cli`] flags, [`scenario`] what is measured (data-driven), [`load`] the load
//! generator, [`target`] the target process, [`stack`] relay server + connector, [`procs`]
//! child processes and `/proc` probes, [`report`] table, targets and JSON, [`crossnode`] the
//! cluster, [`broker`] the broker ceiling, [`rathole`] the competitor.

mod broker;
mod cli;
mod crossnode;
mod hostile;
mod load;
mod procs;
mod rathole;
mod report;
mod scenario;
mod stack;
mod target;
mod tokenflood;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::cli::{BenchArgs, Cli, Command, CrossNode};
use crate::crossnode::{Cluster, Services};
use crate::procs::{Binaries, Probe, Scratch};
use crate::report::{MemoryFigures, Report};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Some(Command::Target(args)) => runtime.block_on(target::serve(args)),
        Some(Command::BusEcho(args)) => runtime.block_on(broker::echo(args)),
        None => runtime.block_on(async {
            tokio::select! {
                result = bench(cli.bench) => result,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            }
        }),
    }
}

/// The whole benchmark; child processes and the scratch directory go away when it returns
/// (also on error or Ctrl-C, as the futures holding them are dropped).
async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: relay-bench is a debug build; build with --release for meaningful figures"
        );
    }
    scenario::check_selection(&args.scenarios)?;
    let binaries = Binaries::locate(args.bin_dir.as_deref())?;
    let load_before = procs::load_average();
    let scratch = Scratch::new(args.keep_temp)?;
    eprintln!("scratch directory: {}", scratch.path().display());
    // The attack rows run only when named, each on a stack of its own.
    let attacks: Vec<&str> = args
        .scenarios
        .iter()
        .map(String::as_str)
        .filter(|s| [hostile::WINDOW_ZERO, hostile::QUEUE_FLOOD].contains(s))
        .collect();
    for attack in &attacks {
        run_attack(&args, &binaries, &scratch, attack).await?;
    }
    if !attacks.is_empty() && args.scenarios.len() == attacks.len() {
        return Ok(());
    }
    let token_flood =
        args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == tokenflood::TOKEN_FLOOD);
    if token_flood
        && args.scenarios.iter().all(|s| s == tokenflood::TOKEN_FLOOD)
        && !args.scenarios.is_empty()
    {
        return run_token_flood(&args, &binaries, &scratch).await;
    }

    let mut target = target::spawn(scratch.path(), args.large_size).await?;
    eprintln!("target listening on {}", target.addr);
    let mut relay = stack::Relay::start(&binaries, scratch.path(), target.addr).await?;
    eprintln!("relay listening on {}; connector attached", relay.public);

    let (mut rathole, rathole_note) = match rathole::locate(args.rathole.as_deref()) {
        Ok(binary) => {
            let rathole = rathole::Rathole::start(&binary, scratch.path(), target.addr)
                .await
                .context("starting rathole")?;
            eprintln!("rathole listening on {}", rathole.public);
            (Some(rathole), None)
        }
        Err(reason) => (None, Some(format!("rathole: skipped ({reason})"))),
    };
    let (mut cluster, cross_node_note) = start_cluster(&args, &binaries, &scratch, &target).await?;
    // The broker ceiling beside the cross-node rows, with the relay nodes' default prefetch.
    let mut echo = match &cluster {
        Some(cluster) if wants_small(&args) => {
            let (amqp_url, prefix) = cluster.bus();
            Some(broker::spawn_echo(scratch.path(), amqp_url, prefix, 64).await?)
        }
        _ => None,
    };

    let server_idle = relay.server.memory()?;
    let connector_idle = relay.connector.memory()?;

    let probes = vec![
        Probe::own("load"),
        Probe::child("target", &target.service)?,
        Probe::child("server", &relay.server)?,
        Probe::child("connector", &relay.connector)?,
    ];
    let rabbitmq = Probe::rabbitmq("rabbitmq");
    let mut cross_probes = vec![probes[0].clone(), probes[1].clone()];
    if let Some(cluster) = &cluster {
        cross_probes.extend(cluster.probes()?);
        cross_probes.extend(rabbitmq.clone());
    }
    let mut broker_probes = vec![probes[0].clone()];
    if let Some(echo) = &echo {
        broker_probes.push(Probe::child("bus-echo", echo)?);
        broker_probes.extend(rabbitmq);
    }
    let rathole_probes = match &rathole {
        Some(r) => vec![
            probes[0].clone(),
            probes[1].clone(),
            Probe::child("rathole-server", &r.server)?,
            Probe::child("rathole-client", &r.client)?,
        ],
        None => Vec::new(),
    };
    let entrances = scenario::Entrances {
        relay: relay.public,
        rathole: rathole.as_ref().map(|r| r.public),
        cross_node: cluster.as_ref().map(|c| c.node_a),
        broker: cluster
            .as_ref()
            .filter(|_| echo.is_some())
            .map(|c| c.bus().0.to_owned()),
    };
    let scenarios = scenario::standard(&args, target.addr, &entrances)?;
    let mut results = Vec::with_capacity(scenarios.len());
    for scenario in &scenarios {
        eprintln!(
            "measuring {}/{}: {} connections, {} warm-up + {} ...",
            scenario.name,
            scenario.path,
            scenario.connections,
            humantime::format_duration(args.warmup),
            humantime::format_duration(args.duration),
        );
        let outcome = match (scenario.path.as_str(), &cluster) {
            (scenario::BROKER, Some(cluster)) => {
                let (amqp_url, prefix) = cluster.bus();
                let (warmup, duration) = (args.warmup, args.duration);
                broker::run(scenario, amqp_url, prefix, warmup, duration, &broker_probes).await?
            }
            (scenario::CROSS_NODE, _) => {
                load::run(scenario, args.warmup, args.duration, &cross_probes).await?
            }
            (scenario::RATHOLE, _) => {
                load::run(scenario, args.warmup, args.duration, &rathole_probes).await?
            }
            _ => load::run(scenario, args.warmup, args.duration, &probes).await?,
        };
        let alive = target
            .service
            .ensure_running()
            .and_then(|()| relay.ensure_running())
            .and_then(|()| {
                rathole
                    .as_mut()
                    .map_or(Ok(()), rathole::Rathole::ensure_running)
            })
            .and_then(|()| cluster.as_mut().map_or(Ok(()), Cluster::ensure_running))
            .and_then(|()| echo.as_mut().map_or(Ok(()), procs::Service::ensure_running));
        alive.with_context(|| {
            format!(
                "during {}/{} ({} requests completed, {} failed{})",
                scenario.name,
                scenario.path,
                outcome.requests,
                outcome.errors.total(),
                outcome
                    .errors
                    .first
                    .as_deref()
                    .map(|f| format!("; first failure: {f}"))
                    .unwrap_or_default(),
            )
        })?;
        results.push(outcome);
    }

    let memory = MemoryFigures {
        server_idle,
        server_after: relay.server.memory()?,
        connector_idle,
        connector_after: relay.connector.memory()?,
    };
    if let Some(mut echo) = echo {
        echo.stop().await;
    }
    if let Some(cluster) = cluster {
        let (amqp_url, prefix) = cluster.bus();
        let (amqp_url, prefix) = (amqp_url.to_owned(), prefix.to_owned());
        cluster.stop().await;
        let tenants = [stack::TENANT, broker::TENANT];
        broker::delete_tenant_queues(&amqp_url, &prefix, &tenants).await;
    }
    if let Some(rathole) = rathole {
        rathole.stop().await;
    }
    relay.connector.stop().await;
    relay.server.stop().await;
    target.service.stop().await;

    let host = format!(
        "{} CPUs; load average {load_before} before, {} after",
        procs::cpus(),
        procs::load_average()
    );
    let mut report = Report::new(&args, results, memory, host);
    report.notes = [rathole_note, cross_node_note]
        .into_iter()
        .flatten()
        .collect();
    report.print();
    if token_flood {
        run_token_flood(&args, &binaries, &scratch).await?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).context("encoding JSON")?
        );
    }
    Ok(())
}

/// The token-flood row, in a directory of its own.
async fn run_token_flood(
    args: &BenchArgs,
    binaries: &Binaries,
    scratch: &Scratch,
) -> anyhow::Result<()> {
    let dir = scratch.path().join("token-flood");
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "measuring token-flood: {} connections, {} ...",
        args.connections,
        humantime::format_duration(args.duration)
    );
    let figures = tokenflood::run(binaries, &dir, args.connections, args.duration)
        .await
        .context("token-flood row")?;
    figures.print();
    Ok(())
}

/// One attack row of [`hostile`], in a directory of its own.
async fn run_attack(
    args: &BenchArgs,
    binaries: &Binaries,
    scratch: &Scratch,
    attack: &str,
) -> anyhow::Result<()> {
    let dir = scratch.path().join(attack);
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut target = target::spawn(&dir, args.large_size).await?;
    eprintln!(
        "measuring {attack}: {} ...",
        humantime::format_duration(args.duration)
    );
    if attack == hostile::WINDOW_ZERO {
        let mut relay = stack::Relay::start(binaries, &dir, target.addr).await?;
        let figures = hostile::window_zero(&relay, args.duration).await?;
        relay.ensure_running()?;
        figures.print();
        relay.connector.stop().await;
        relay.server.stop().await;
    } else {
        let mut relay =
            stack::Relay::start_with(binaries, &dir, target.addr, &hostile::queue_server_toml())
                .await?;
        let figures =
            hostile::queue_flood(binaries, &relay, &dir, args.connections, args.duration).await?;
        relay.ensure_running()?;
        figures.print();
        relay.connector.stop().await;
        relay.server.stop().await;
    }
    target.service.stop().await;
    Ok(())
}

/// The cross-node cluster, or why there is none (`--cross-node off`, or `auto` without
/// PostgreSQL, RabbitMQ or relay-identity); `on` turns the latter into an error.
async fn start_cluster(
    args: &BenchArgs,
    binaries: &Binaries,
    scratch: &Scratch,
    target: &target::TargetProcess,
) -> anyhow::Result<(Option<Cluster>, Option<String>)> {
    if args.cross_node == CrossNode::Off {
        return Ok((None, Some("cross-node: skipped (--cross-node off)".into())));
    }
    let services = match Services::create(args, binaries).await {
        Ok(services) => services,
        Err(reason) if args.cross_node == CrossNode::Auto => {
            let note = format!("cross-node: skipped ({reason})");
            eprintln!("{note}");
            return Ok((None, Some(note)));
        }
        Err(reason) => anyhow::bail!("--cross-node on: {reason}"),
    };
    let dir = scratch.path().join("cross-node");
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cluster = Cluster::start(binaries, &dir, target.addr, services)
        .await
        .context("starting the cross-node cluster")?;
    eprintln!(
        "cross-node: node A on {}, connector attached to node B",
        cluster.node_a
    );
    Ok((Some(cluster), None))
}

/// Whether the run includes the small scenario (the one with a broker-ceiling row).
fn wants_small(args: &BenchArgs) -> bool {
    args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == scenario::SMALL)
}

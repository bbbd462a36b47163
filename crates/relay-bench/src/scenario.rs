//! What is measured: a scenario is plain data (name, path, URL, connections, body size), so a
//! set-up such as the cross-node one (client on node A, connector on node B) is one more entry
//! whose URL points elsewhere.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use hyper::Uri;

use crate::cli::BenchArgs;
use crate::target::SMALL_SIZE;

/// Path label of the baseline every other path of the same scenario is compared with.
pub const DIRECT: &str = "direct";
/// Path label of the single-node relay.
pub const RELAY: &str = "relay";
/// Path label of the competitor baseline (rathole, a TCP tunnel).
pub const RATHOLE: &str = "rathole";
/// Path label of the cross-node relay (client on node A, connector on node B).
pub const CROSS_NODE: &str = "cross-node";
/// Path label of the broker ceiling: the cross-node message pattern without HTTP or nodes.
pub const BROKER: &str = "broker";

/// Scenario names, as used by `--scenarios` and the targets in the report.
pub const SMALL: &str = "small";
pub const LARGE: &str = "large";

#[derive(Debug, Clone)]
pub struct Scenario {
    /// What kind of traffic: `small`, `large`.
    pub name: String,
    /// How it reaches the target: `direct`, `relay`, `cross-node`.
    pub path: String,
    /// `http://host:port/path`; every request is a GET of it.
    pub url: Uri,
    /// Exactly this many keep-alive connections, each with one request at a time.
    pub connections: u16,
    /// Expected body length of every answer; any other length counts as an error.
    pub body_size: u64,
}

impl Scenario {
    pub fn new(
        name: &str,
        path: &str,
        url: &str,
        connections: u16,
        body_size: u64,
    ) -> anyhow::Result<Scenario> {
        let url: Uri = url
            .parse()
            .with_context(|| format!("scenario {name}/{path}: `{url}` is not a URL"))?;
        if url.scheme_str() != Some("http") || url.authority().is_none() {
            bail!("scenario {name}/{path}: `{url}` must be an http://host:port/... URL");
        }
        Ok(Scenario {
            name: name.to_owned(),
            path: path.to_owned(),
            url,
            connections,
            body_size,
        })
    }
}

impl Scenario {
    /// The broker-ceiling row: round trips over `amqp_url` (shown without credentials).
    pub fn broker(
        name: &str,
        amqp_url: &str,
        connections: u16,
        body_size: u64,
    ) -> anyhow::Result<Scenario> {
        let (scheme, rest) = amqp_url.split_once("://").unwrap_or(("amqp", amqp_url));
        let host = rest.split('/').next().unwrap_or(rest);
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let url: Uri = format!("{scheme}://{host}/")
            .parse()
            .with_context(|| format!("scenario {name}/{BROKER}: `{amqp_url}` is not a URL"))?;
        Ok(Scenario {
            name: name.to_owned(),
            path: BROKER.to_owned(),
            url,
            connections,
            body_size,
        })
    }
}

/// Public addresses of the set-ups under test besides the direct target.
pub struct Entrances {
    pub relay: SocketAddr,
    /// rathole's public port, when rathole runs.
    pub rathole: Option<SocketAddr>,
    /// Node A of the cross-node cluster, when it runs.
    pub cross_node: Option<SocketAddr>,
    /// The cluster's broker URL, for the broker-ceiling row beside the small cross-node row.
    pub broker: Option<String>,
}

/// Each kind once direct, once through the single-node relay, through rathole and, given node
/// A of a cluster, cross-node, in this order.
pub fn standard(
    args: &BenchArgs,
    target: SocketAddr,
    entrances: &Entrances,
) -> anyhow::Result<Vec<Scenario>> {
    let kinds = [
        (SMALL, "small", args.connections, SMALL_SIZE as u64),
        (LARGE, "large", args.large_connections, args.large_size),
    ];
    check_selection(&args.scenarios)?;
    let mut scenarios = Vec::new();
    for (name, route, connections, size) in kinds {
        if !args.scenarios.is_empty() && !args.scenarios.iter().any(|s| s == name) {
            continue;
        }
        let direct = format!("http://{target}/{route}");
        let relayed = |node: SocketAddr| {
            format!(
                "http://{node}/relay/{}/{}/{route}",
                crate::stack::TENANT,
                crate::stack::TARGET
            )
        };
        scenarios.push(Scenario::new(name, DIRECT, &direct, connections, size)?);
        scenarios.push(Scenario::new(
            name,
            RELAY,
            &relayed(entrances.relay),
            connections,
            size,
        )?);
        if let Some(rathole) = entrances.rathole {
            let url = format!("http://{rathole}/{route}");
            scenarios.push(Scenario::new(name, RATHOLE, &url, connections, size)?);
        }
        if let Some(node_a) = entrances.cross_node {
            let url = relayed(node_a);
            scenarios.push(Scenario::new(name, CROSS_NODE, &url, connections, size)?);
        }
        if let Some(amqp_url) = entrances.broker.as_deref().filter(|_| name == SMALL) {
            scenarios.push(Scenario::broker(name, amqp_url, connections, size)?);
        }
    }
    Ok(scenarios)
}

/// Fails on `--scenarios` names that do not exist (checked before anything is started).
pub fn check_selection(wanted: &[String]) -> anyhow::Result<()> {
    for name in wanted {
        let known = [
            SMALL,
            LARGE,
            crate::tokenflood::TOKEN_FLOOD,
            crate::hostile::WINDOW_ZERO,
            crate::hostile::QUEUE_FLOOD,
        ];
        if !known.contains(&name.as_str()) {
            bail!("unknown scenario `{name}`; known: {}", known.join(", "));
        }
    }
    Ok(())
}

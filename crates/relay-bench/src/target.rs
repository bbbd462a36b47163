//! The target: a lean HTTP/1.1 server in its own process, so that its CPU time is not the
//! load generator's. `/small` answers [`SMALL_SIZE`] bytes, `/large` the configured size, both
//! from buffers allocated once at start (each answer is a cheap `Bytes` clone).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::io::Read;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::procs::Service;

/// Body length of `/small`.
pub const SMALL_SIZE: usize = 100;

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Address to listen on; the bound address is printed as the first line of stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,

    /// Body size of `/large`.
    #[arg(long, default_value = "10MiB", value_parser = crate::cli::parse_size)]
    pub large_size: u64,
}

/// Serves until stdin reaches end-of-file, i.e. until the benchmark that started it is gone
/// (even if it was killed and could not kill this process).
pub async fn serve(args: TargetArgs) -> anyhow::Result<()> {
    let large_size =
        usize::try_from(args.large_size).context("--large-size does not fit in memory")?;
    let small = Bytes::from(vec![b's'; SMALL_SIZE]);
    let large = Bytes::from(vec![b'L'; large_size]);
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    println!(
        "{}",
        listener.local_addr().context("reading the bound address")?
    );

    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (small, large) = (small.clone(), large.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let body = match req.uri().path() {
                        "/small" => Some(small.clone()),
                        "/large" => Some(large.clone()),
                        _ => None,
                    };
                    async move {
                        let response = match body {
                            Some(bytes) => Response::new(Full::new(bytes)),
                            None => {
                                let mut r =
                                    Response::new(Full::new(Bytes::from_static(b"not found\n")));
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = gone_tx.send(());
    });
    let parent_gone = async {
        let _ = gone_rx.await;
    };
    tokio::select! {
        () = accept => {}
        () = parent_gone => {}
    }
    Ok(())
}

/// The target process and the address it listens on.
pub struct TargetProcess {
    pub addr: SocketAddr,
    pub service: Service,
}

/// Re-executes this binary as `relay-bench target` and reads the address it bound.
pub async fn spawn(log_dir: &Path, large_size: u64) -> anyhow::Result<TargetProcess> {
    let exe = std::env::current_exe().context("locating the relay-bench executable")?;
    let mut command = Command::new(exe);
    command.args([
        "target",
        "--addr",
        "127.0.0.1:0",
        "--large-size",
        &large_size.to_string(),
    ]);
    let mut service = Service::spawn("target", command, log_dir, true)?;
    let stdout = service
        .child
        .stdout
        .take()
        .context("target stdout is not captured")?;
    let mut first = String::new();
    let mut stdout = BufReader::new(stdout);
    let read = stdout.read_line(&mut first);
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) | Ok(Err(_)) => {
            bail!(
                "target exited before printing its address:\n{}",
                service.log_tail()
            )
        }
        Err(_) => bail!("target did not print its address within 10s"),
    }
    let addr = first
        .trim()
        .parse()
        .with_context(|| format!("target printed `{}` instead of an address", first.trim()))?;
    Ok(TargetProcess { addr, service })
}

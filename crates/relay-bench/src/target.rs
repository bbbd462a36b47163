//! The target: a lean HTTP/1.1 server in its own process, so that its CPU time is not the
//! load generator's. `/small` answers [`SMALL_SIZE`] bytes, `/large` the configured size, both
//! from buffers allocated once at start (each answer is a cheap `Bytes` clone).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use tokio::net::TcpListener;

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
    tokio::select! {
        () = accept => {}
        () = crate::procs::parent_gone() => {}
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
    let size = large_size.to_string();
    let args = ["target", "--addr", "127.0.0.1:0", "--large-size", &size];
    let (service, first) =
        Service::spawn_helper("target", &args, log_dir, Duration::from_secs(10)).await?;
    let addr = first
        .parse()
        .with_context(|| format!("target printed `{first}` instead of an address"))?;
    Ok(TargetProcess { addr, service })
}

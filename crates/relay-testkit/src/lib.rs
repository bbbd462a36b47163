//! Test support shared by the end-to-end tests and the benchmark.
//!
//! - [`target`]: an HTTP server standing in for a private-network service.
//! - [`process`]: the real binaries as child processes (kill, SIGTERM, memory).
//! - [`broker`]: RabbitMQ failure injection.
//! - [`client`]: a plain HTTP client and streaming byte patterns with checksums.
//! - [`proxy`]: a TCP forwarder that can silently stop passing bytes.
//! - [`notify`]: a fake systemd notification socket.
//! - [`tls`]: a test certificate authority.
//! - [`connect_proxy`]: an HTTP `CONNECT` proxy that counts tunnels.
//! - [`wait`]: waiting on a condition with a deadline (no bare sleeps in tests).
#![allow(clippy::unwrap_used)]

pub mod broker;
pub mod client;
pub mod connect_proxy;
pub mod notify;
pub mod process;
pub mod proxy;
pub mod target;
pub mod tls;
pub mod wait;

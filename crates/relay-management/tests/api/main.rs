//! Contract tests of the management API over real HTTP, against a real database (SQLite
//! always, PostgreSQL when reachable), with tokens from a real in-process identity service.
#![allow(clippy::unwrap_used)]

mod contract;
mod fuzz;
mod harness;
mod lifetimes;

//! Integration tests of `relay-store` against real databases; see `harness` for how the
//! SQLite and PostgreSQL variants of each test get their own database.

mod harness;

mod connect;
mod connections;
mod installation;
mod keys;
mod management;
mod origins;
mod postgres_tls;
mod secrets;
mod tenants;
mod upgrade;

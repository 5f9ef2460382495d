//! Sightline core: takes agents' event streams exactly once, joins them with
//! Dataset B, stores them durably, and serves queries, live events and metrics.
//!
//! Layout (the data path, left to right):
//! - [`ingest`]: one agent-session logic (Hello → Welcome → Batches ⇄ Acks),
//!   with the gRPC adapter; the protocol is written down in `ingest/PROTOCOL.md`.
//! - [`dedup`]: the partitioned pipeline — one writer per partition, watermark
//!   (transport) and det_oid (semantic) dedup, group commit.
//! - [`enrich`]: Dataset B, loaded from CSV or Parquet, swapped atomically.
//! - [`store`]: RocksDB — key layouts and their promises in its module docs.
//! - [`media`]: footage — chunked, resumable uploads checked and kept in an
//!   object store, attached to events, served over HTTP with byte ranges.
//! - [`api`]: the gRPC query/admin API, live fan-out, HTTP (/metrics, /healthz).
//! - [`edge`]: the edge link — gRPC over TLS and QUIC on one port, mutual
//!   TLS identities, the agent registry (cameras per agent, revocations).
//! - [`access`]: accounts, sessions, API tokens, roles and location scopes.
//! - [`audit`]: the hash-chained audit log — who saw which footage, who
//!   changed what; `sightline-core audit verify|export`.
//! - [`fleet`]: which agents exist and what they last reported.
//! - [`export`]: batch export to Parquet, Hive-partitioned by hour — a
//!   command (`sightline-core export parquet`) and a continuous exporter.
//! - [`cases`]: evidence export — selected events and their footage with a
//!   manifest signed by the site's Ed25519 key, and its verification.
//! - [`certs`]: the CA for the edge link's mutual TLS (`sightline-core certs`).
//! - [`client`]: the terminal client (`sightline-core top|tail|fleet|...`).
//! - [`server`]: wires it all, runs until shutdown, and drains it.
//! - [`signal`]: SIGTERM/SIGINT start the shutdown; SIGHUP reloads.
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod audit;
pub mod backup;
pub mod cases;
pub mod certs;
pub mod client;
pub mod cluster;
pub mod completeness;
pub mod config;
pub mod config_file;
pub mod dedup;
pub mod edge;
pub mod enrich;
pub mod export;
pub mod fleet;
pub mod ingest;
pub mod media;
pub mod metrics;
pub mod search;
pub mod server;
pub mod signal;
pub mod store;

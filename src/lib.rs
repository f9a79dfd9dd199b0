//! Chorus: a horizontally scaled chat server.
//!
//! Module map, top layer first (docs/ARCHITECTURE.md §0 draws it; `tests/api/layers.rs` keeps
//! imports pointing down):
//! - [`startup`]: builds the node's [`state::AppState`] from [`config`], starts its tasks, runs the
//!   HTTP server and the drain.
//! - [`http`]: REST handlers, thin: parse, call [`service`], shape the response.
//! - [`ws`]: the WebSocket transport: frames in and out (`wire`), heartbeat, close codes.
//! - [`telemetry`]: structured logs and per-request ids.
//! - [`session`]: a connected client whatever its transport: `ready`, its commands, its end.
//! - [`service`]: what Chorus does (accounts, rooms, messages), shared by every transport.
//! - [`presence`]: who is online, kept in Redis.
//! - [`state`]: `AppState`, what the layers above share; it imports none of them.
//! - [`limits`]: per-user cost limits (sends, rooms, password attempts), cluster-wide in Redis.
//! - [`revocations`]: "log out everywhere": revoked token generations, polled from PostgreSQL.
//! - [`fanout`]: turns an event into one frame and one PUBLISH.
//! - [`hub`]: this node's sockets, room subscriptions, in-order gap-free delivery.
//! - [`bus`]: this node's Redis pub/sub connection (subscribe) and publishing.
//! - [`db`]: PostgreSQL schema, row types and one query module per aggregate.
//! - [`protocol`], [`error`], [`config`], [`metrics`], [`auth`], [`validate`], [`ratelimit`],
//!   [`clock`]: the wire types, the one error enum and its wire codes, settings, Prometheus
//!   metrics, passwords and tokens, input rules, token buckets, the wall clock.

mod auth;
mod bus;
mod clock;
pub mod config;
mod db;
mod error;
mod fanout;
mod http;
mod hub;
mod kv;
mod limits;
mod metrics;
mod presence;
mod protocol;
mod ratelimit;
mod revocations;
mod service;
mod session;
mod sio;
pub mod startup;
mod state;
mod telemetry;
mod validate;
mod ws;

// What the binary, the tests and the load generator use; everything else is private, so the
// compiler flags what nothing uses.
pub use auth::tokens::Claims;
pub use clock::unix_secs;
pub use db::{run_migrations, schema, MIGRATIONS};
pub use telemetry::init as init_logging;

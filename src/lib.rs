//! Chorus: a horizontally scaled chat server.
//!
//! Module map, following a message from the wire to storage:
//! - [`config`]: settings from the environment, read and validated once at start-up.
//! - [`startup`]: builds [`startup::AppState`] (pools, keys) and runs the HTTP server.
//! - [`http`]: REST handlers, thin: parse, call [`service`], shape the response.
//! - [`service`]: what Chorus does (accounts, rooms, messages), shared by REST and WebSocket.
//! - [`db`]: PostgreSQL schema, row types and one query module per aggregate.
//! - [`auth`]: argon2id passwords, JWT access tokens, rotating refresh tokens.
//! - [`ws`]: the WebSocket endpoint, the per-socket session loop, and the socket's framing (`wire`).
//! - [`fanout`]: turns an event into one frame and one PUBLISH.
//! - [`bus`]: this node's Redis pub/sub connection (subscribe) and publishing.
//! - [`hub`]: this node's sockets, room subscriptions, in-order gap-free delivery.
//! - [`presence`]: who is online, kept in Redis.
//! - [`limits`]: per-user cost limits (sends, rooms, password attempts), cluster-wide in Redis.
//! - [`revocations`]: "log out everywhere": revoked token generations, polled from PostgreSQL.
//! - [`metrics`]: Prometheus metrics.
//! - [`protocol`]: the wire types.
//! - [`error`]: the one error enum and its mapping to HTTP status and wire code.
//! - [`telemetry`]: structured logs and per-request ids.

pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod revocations;
pub mod service;
pub mod session;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod validate;
pub mod ws;

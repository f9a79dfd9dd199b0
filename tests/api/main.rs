//! One integration-test binary: every test talks HTTP (and WebSocket) to real nodes.
// The whole crate is test code, helpers included: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod clients;
mod helpers;

mod accounts;
mod cluster;
mod group_commit;
mod layers;
mod messages;
mod metrics;
mod ops;
mod partition;
mod redis_cluster;
mod resilience;
mod rooms;
mod security;
mod sentinel;
mod socketio;
mod wire;

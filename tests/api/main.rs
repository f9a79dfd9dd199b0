//! One integration-test binary: every test talks HTTP (and WebSocket) to real nodes.

mod helpers;

mod accounts;
mod cluster;
mod messages;
mod metrics;
mod ops;
mod resilience;
mod rooms;
mod security;
mod wire;
mod ws;

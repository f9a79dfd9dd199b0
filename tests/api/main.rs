//! One integration-test binary: every test talks HTTP (and WebSocket) to real nodes.

mod helpers;

mod accounts;
mod messages;
mod ops;
mod rooms;
mod cluster;
mod ws;
mod resilience;

//! What Chorus does, independent of transport: REST handlers and WebSocket commands both call these
//! functions, so a rule (who may do what, what is validated) lives in exactly one place.

pub mod accounts;
pub mod messages;
pub mod rooms;
pub mod sessions;

//! A connected client, whatever carries its frames. The session core owns what a real-time client
//! *is*: its user and session id, its place in the hub (rooms and stream positions), its rate
//! budget and typing throttle, how it starts (`ready`), the commands it runs, and how it ends. A
//! transport (the WebSocket endpoint today, a Socket.IO one tomorrow) reads frames, turns each into
//! an event name, `data` and an optional reference, and hands them to [`Session::handle`]; what the
//! session sends back goes through the transport's [`Outbox`], which frames it.
//!
//! What the hub fans out does not pass through here: the hub queues frames serialized once per
//! event, and the transport's connection reads that queue itself.

mod commands;

use std::collections::HashMap;
use std::future::Future;
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::hub::{Outbound, Recipient, SessionControl, WorkerId};
use crate::presence;
use crate::protocol::ws::{close_code, ClientEvent, Ready, ReadyRoom, ServerEvent, CLIENT_EVENTS};
use crate::ratelimit::TokenBucket;
use crate::service::sessions;
use crate::state::AppState;

/// What a session writes to its client, framed by the transport. Writes are in call order, ahead
/// of anything the hub queued that the connection has not written yet.
pub trait Outbox {
    /// Writes a server event; returns the bytes it took on the wire.
    fn event(&self, event: &ServerEvent) -> usize;
    /// Answers a client event: with a reference, a reply carrying `result` (once per reference);
    /// without one, nothing on success and an `error` event on failure.
    fn answer(&self, reference: Option<String>, result: Result<Value, &ApiError>);
    /// Stops writing what the hub queued until [`Outbox::release`].
    fn hold(&self);
    fn release(&self);
    /// Per room, the highest seq this client has been sent: the hub's frames at or below it are
    /// skipped, so a replay and the live stream never duplicate each other.
    fn delivered(&self) -> impl DerefMut<Target = HashMap<Uuid, i64>> + '_;
    /// Resolves once what was written has been handed to the connection (or the client is gone).
    fn flushed(&self) -> impl Future<Output = ()>;
}

/// Why the core ends a session: the close code, and the reason (metrics label, close reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: &'static str,
}

impl Closing {
    const fn new(code: u16, reason: &'static str) -> Self {
        Closing { code, reason }
    }
}

pub struct Session {
    pub state: Arc<AppState>,
    /// Who is connected; `auth` swaps in a fresh token's expiry and generation.
    pub user: AuthUser,
    pub id: Uuid,
    /// How the hub, a revocation or a drain asks this session to close.
    pub control: Arc<SessionControl>,
    /// Per room, when this session last forwarded `typing` (throttle).
    typing_at: HashMap<Uuid, Instant>,
    /// Client events per second (`CHORUS_WS_RATE_PER_S`, burst `CHORUS_WS_RATE_BURST`).
    rate: TokenBucket,
}

impl Session {
    /// Registers a new session with the hub; `queue` is what the hub fills for the connection.
    pub async fn open(
        state: Arc<AppState>,
        user: AuthUser,
        worker: WorkerId,
        queue: mpsc::Sender<Outbound>,
    ) -> Session {
        let id = Uuid::now_v7();
        let control = Arc::new(SessionControl::new(user.generation));
        let recipient = Recipient { user: user.id, tx: queue, control: control.clone(), worker };
        Box::pin(state.hub.register(id, recipient)).await;
        state.metrics.ws_connections.inc();
        state.metrics.ws_connects_total.inc();
        let settings = &state.settings;
        let rate = TokenBucket::new(f64::from(settings.ws_rate_per_s), f64::from(settings.ws_rate_burst));
        Session { state, user, id, control, typing_at: HashMap::new(), rate }
    }

    /// Records presence, enforces the per-user session cap, attaches the user's rooms and sends
    /// `ready`; or says why the session ends before it starts.
    pub async fn start(&mut self, out: &impl Outbox) -> Result<(), Closing> {
        // A revocation that landed between the transport's token check and the hub registration
        // found no session to close: look again now that the session is registered.
        if self.state.revocations.check(self.user.id, self.user.generation).is_err() {
            return Err(Closing::new(close_code::TOKEN_REVOKED, "token_revoked"));
        }
        let before = match presence::session_opened(&self.state, self.user.id, self.id).await {
            Ok(before) => before,
            Err(error) => {
                tracing::warn!(%error, "presence: could not record the session");
                // Unknown: not announced as a transition, and not refused (Redis trouble fails open).
                1
            }
        };
        // The newest session past the cap is the one refused: the user's working sessions stay up.
        if before >= u64::from(self.state.settings.max_sockets_per_user) {
            return Err(Closing::new(close_code::TOO_MANY_SESSIONS, "too_many_sessions"));
        }
        Box::pin(self.send_ready(out, before == 0)).await.map_err(|e| {
            tracing::warn!(error = %e, "could not prepare the session");
            Closing::new(1011, "error")
        })
    }

    async fn send_ready(&mut self, out: &impl Outbox, first: bool) -> Result<(), ApiError> {
        let state = self.state.clone();
        let start = sessions::start(&state, self.user.id).await?;
        let baselines: Vec<(Uuid, i64)> = start.rooms.iter().map(|r| (r.room_id, r.last_seq)).collect();
        let effective: HashMap<Uuid, i64> = state.hub.attach(self.id, &baselines).await.into_iter().collect();
        // A removal (or ban) that committed after the read above announced itself before this
        // session was attached, so the hub could not detach it: re-read the memberships now.
        let still = sessions::member_rooms(&state, self.user.id).await?;
        for (room, _) in &baselines {
            if !still.contains(room) {
                state.hub.detach(self.id, *room);
            }
        }
        let rooms = start
            .rooms
            .into_iter()
            .filter(|r| still.contains(&r.room_id))
            .map(|r| {
                let last_seq = effective.get(&r.room_id).copied().unwrap_or(r.last_seq);
                out.delivered().insert(r.room_id, last_seq);
                ReadyRoom { room_id: r.room_id, last_seq, delivered_seq: r.delivered_seq, read_seq: r.read_seq }
            })
            .collect();
        out.event(&ServerEvent::Ready(Ready {
            user: start.user,
            session_id: self.id,
            node_id: state.settings.node_id().to_owned(),
            rooms,
            heartbeat_s: state.settings.ws_heartbeat_s,
        }));
        // `ready` is first; the hub's queue (held until now) follows.
        out.release();
        if first {
            let user = self.user.id;
            let change = presence::Change::Online { last_seen_at: start.last_seen_at };
            tokio::spawn(async move { presence::announce(&state, user, change).await });
        }
        Ok(())
    }

    /// Takes a token from the session's rate budget; every client frame does, malformed ones
    /// included, before it is even parsed.
    pub fn admit(&mut self) -> Result<(), ApiError> {
        self.rate.take().map_err(|retry_after| {
            self.state.metrics.ws_frames_total.with_label_values(&["rate_limited"]).inc();
            ApiError::RateLimited(retry_after)
        })
    }

    /// Refuses a frame the transport could not read as an event.
    pub fn refuse(&self, out: &impl Outbox, reference: Option<String>, error: &ApiError) {
        self.state.metrics.ws_frames_total.with_label_values(&["invalid"]).inc();
        out.answer(reference, Err(error));
    }

    /// Runs one client event (already admitted) and answers it. Every failure is answered; the
    /// session stays open.
    pub async fn handle(&mut self, out: &impl Outbox, event: &str, data: Option<Value>, reference: Option<String>) {
        if !CLIENT_EVENTS.contains(&event) {
            return self.refuse(out, reference, &ApiError::field("event", format!("unknown event `{event}`")));
        }
        let parsed = match ClientEvent::parse(event, data) {
            Ok(parsed) => parsed,
            Err(e) => return self.refuse(out, reference, &e),
        };
        self.state.metrics.ws_frames_total.with_label_values(&["ok"]).inc();
        // Live frames wait while the command runs: the answer goes out before anything it caused
        // (a `send`'s reply before that message's own `message` event, which may reach this
        // session's queue from the bus before the command returns).
        out.hold();
        match commands::run(self, out, parsed).await {
            Ok(value) => out.answer(reference, Ok(value)),
            Err(error) => {
                if let ApiError::Internal(cause) | ApiError::Unavailable(cause) = &error {
                    tracing::error!(error = %cause, debug = ?cause, event, "session command failed");
                }
                out.answer(reference, Err(&error));
            }
        }
        out.release();
    }

    /// Why the hub (or a drain, or a revocation) asked this session to close.
    pub fn closing(&self) -> Closing {
        match self.control.close_code() {
            // The token's own expiry is the transport's timer; through the control, 4001 is a revocation.
            Some(close_code::TOKEN_REVOKED) => Closing::new(close_code::TOKEN_REVOKED, "token_revoked"),
            Some(close_code::SLOW_CONSUMER) => Closing::new(close_code::SLOW_CONSUMER, "slow_consumer"),
            Some(close_code::SERVICE_RESTART) => Closing::new(close_code::SERVICE_RESTART, "draining"),
            Some(code) => Closing::new(code, "closed"),
            None => Closing::new(1000, "closed"),
        }
    }

    /// Ends the session: out of the hub, counted under `reason`, its presence lease removed.
    pub async fn close(self, reason: &'static str) {
        let state = self.state;
        state.hub.unregister(self.id);
        state.metrics.ws_connections.dec();
        state.metrics.ws_disconnects_total.with_label_values(&[reason]).inc();
        match presence::session_closed(&state, self.user.id, self.id).await {
            Ok(true) => presence::announce(&state, self.user.id, presence::Change::Offline).await,
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "presence: could not remove the session lease"),
        }
    }
}

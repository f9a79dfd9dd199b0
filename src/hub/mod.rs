//! This node's sockets and what they listen to. The hub owns `session → queue` and `room → sessions`
//! maps, keeps each room's live stream in `seq` order without gaps (filling from PostgreSQL when the
//! bus delivers out of order or drops something), and hands frames to sockets with `try_send` only:
//! it never waits on a socket, so one slow client cannot delay anyone else.
//!
//! The hub's tasks run on the first HTTP worker's thread (see `startup::NodeTasks`); with one worker
//! per node, a message goes from the pub/sub connection to the sockets without changing threads.
//! With more workers, a message for a room is handed to each worker that has sockets in it as ONE
//! batch, and the worker queues it to its own sockets: waking a task on another thread costs a
//! system call and a context switch, paid once per worker instead of once per recipient.
//!
//! By concern:
//! - this file: the registry (sessions, rooms, users), Redis subscriptions that follow it, and the
//!   routing of each bus envelope to its recipients;
//! - `order`: per-room, in-order, gap-free delivery of messages (the room shards, gap fill);
//! - `delivery`: handing frames to sockets' queues on their own worker threads, backpressure;
//! - `recovery`: what runs when the bus was lost: catch-up, membership reconcile, degraded polling.
//!
//! The channels inside the hub are unbounded on purpose: each carries work the hub has already
//! accepted from the one bus connection (or a membership change), and a bound would have to either
//! drop it (a gap, or a socket left attached) or stall the bus reader for every room. What bounds
//! them is upstream: the bus delivers what was published, and every socket's own queue is bounded.

mod delivery;
mod order;
mod recovery;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU16, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use crate::bus::{Bus, BusEvent, Envelope, Kind};
use crate::db::DbPool;
use crate::metrics::Metrics;
use delivery::Delivery;
use order::{ShardWork, SHARDS};

pub type SessionId = Uuid;

/// What the hub queues for a socket: one allocation per event, shared by every recipient. A queue slot
/// is then one pointer, and a socket's queue block (32 slots, allocated when the socket opens, plus a
/// second once it has carried 32 frames) costs a few hundred bytes instead of a few KiB.
pub type Outbound = Arc<Queued>;

#[derive(Debug)]
pub struct Queued {
    /// The event as an `/api/v1/ws` frame.
    pub frame: ByteString,
    /// For a room's message, `(room, seq)`: the session drops it if it already has this seq (e.g.
    /// from a `sync`).
    pub stream: Option<(Uuid, i64)>,
    /// The same event as a Socket.IO packet, made by the first Socket.IO recipient that writes it
    /// and shared by the rest: each protocol serializes an event at most once, not once per socket.
    socketio: OnceLock<ByteString>,
}

impl Queued {
    pub(crate) fn new(frame: ByteString, stream: Option<(Uuid, i64)>) -> Outbound {
        Arc::new(Queued { frame, stream, socketio: OnceLock::new() })
    }

    fn frame(frame: &ByteString) -> Outbound {
        Queued::new(frame.clone(), None)
    }

    /// The event as an Engine.IO `message` packet carrying a Socket.IO EVENT.
    pub fn socketio_packet(&self) -> &ByteString {
        self.socketio.get_or_init(|| ByteString::from(crate::protocol::socketio::event_from_frame(&self.frame)))
    }
}

/// Lets the hub (or a drain) tell a session task to close with a code, even while its queue is full.
#[derive(Default)]
pub struct SessionControl {
    close_code: AtomicU16,
    pub notify: Notify,
    /// The token generation of the access token the session last authenticated with: a revocation
    /// of that generation closes the session (`revocations`).
    token_generation: AtomicI32,
}

impl SessionControl {
    pub fn new(token_generation: i32) -> Self {
        SessionControl { token_generation: AtomicI32::new(token_generation), ..SessionControl::default() }
    }
    pub fn set_token_generation(&self, generation: i32) {
        self.token_generation.store(generation, Ordering::Release);
    }

    pub fn close(&self, code: u16) {
        if self.close_code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.notify.notify_one();
        }
    }
    pub fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }
}

/// An HTTP worker thread that has a delivery task (see [`Hub::add_worker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerId(usize);

/// A local socket as the fan-out sees it.
#[derive(Clone)]
pub struct Recipient {
    pub user: Uuid,
    pub tx: mpsc::Sender<Outbound>,
    pub control: Arc<SessionControl>,
    /// The worker thread the socket's task runs on; its frames are queued from there.
    pub worker: WorkerId,
}

struct RoomEntry {
    recipients: HashMap<SessionId, Recipient>,
    /// Highest seq handed to local sockets; only the room's shard task moves it.
    last_seq: AtomicI64,
}

#[derive(Default)]
struct State {
    sessions: HashMap<SessionId, (Recipient, HashSet<Uuid>)>,
    rooms: HashMap<Uuid, RoomEntry>,
    users: HashMap<Uuid, HashSet<SessionId>>,
}

pub struct Hub {
    state: RwLock<State>,
    bus: Bus,
    db: DbPool,
    metrics: Arc<Metrics>,
    /// Rooms are hashed onto these tasks: each room's messages are handled in order by one task,
    /// while different rooms proceed in parallel (and one room's gap fill does not stall the rest).
    shards: Vec<mpsc::UnboundedSender<ShardWork>>,
    /// Per HTTP worker thread, its delivery task's inbox; indexed by [`WorkerId`].
    workers: RwLock<Vec<mpsc::UnboundedSender<Delivery>>>,
    queue_capacity: usize,
}

/// The hub's tasks, built but not yet running.
pub struct HubTasks {
    shards: Vec<mpsc::UnboundedReceiver<ShardWork>>,
    bus_events: mpsc::UnboundedReceiver<BusEvent>,
    poll_interval: Duration,
}

impl HubTasks {
    /// Spawns the tasks on the current runtime. They hold weak references: when the node drops its
    /// hub, they end.
    pub fn spawn(self, hub: &Arc<Hub>) {
        for rx in self.shards {
            tokio::spawn(order::shard_loop(Arc::downgrade(hub), rx));
        }
        tokio::spawn(recovery::bus_loop(Arc::downgrade(hub), self.bus_events));
        tokio::spawn(recovery::degraded_poller(Arc::downgrade(hub), self.poll_interval));
    }
}

impl Hub {
    /// Builds the hub. Its tasks (the bus event loop, the room shards, the degraded-mode poller) do
    /// not run yet: the node starts them with [`HubTasks::spawn`] on the thread that serves its sockets.
    pub fn new(
        bus: Bus,
        bus_events: mpsc::UnboundedReceiver<BusEvent>,
        db: DbPool,
        metrics: Arc<Metrics>,
        queue_capacity: usize,
        poll_interval: Duration,
    ) -> (Arc<Hub>, HubTasks) {
        let mut shards = Vec::with_capacity(SHARDS);
        let mut receivers = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            let (tx, rx) = mpsc::unbounded_channel();
            shards.push(tx);
            receivers.push(rx);
        }
        let hub = Arc::new(Hub {
            state: RwLock::default(),
            bus,
            db,
            metrics,
            shards,
            workers: RwLock::default(),
            queue_capacity,
        });
        (hub, HubTasks { shards: receivers, bus_events, poll_interval })
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than losing every socket, so keep going with the data.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    pub fn session_count(&self) -> usize {
        self.read().sessions.len()
    }

    /// `(user, session)` of every local socket (presence lease renewal).
    pub fn sessions(&self) -> Vec<(Uuid, SessionId)> {
        self.read().sessions.iter().map(|(id, (r, _))| (r.user, *id)).collect()
    }

    /// Whether a session currently receives a room (typing is only accepted from members).
    pub fn is_attached(&self, session: SessionId, room: Uuid) -> bool {
        self.read().sessions.get(&session).is_some_and(|(_, rooms)| rooms.contains(&room))
    }

    /// Adds a socket and subscribes its user's channel.
    pub async fn register(&self, session: SessionId, recipient: Recipient) {
        let user = recipient.user;
        // Subscription requests are made while holding the lock, so their order in Redis is the order
        // of the state changes (an UNSUBSCRIBE from a concurrent detach cannot overtake them).
        let confirmed = {
            let mut state = self.write();
            state.sessions.insert(session, (recipient, HashSet::new()));
            let sessions = state.users.entry(user).or_default();
            sessions.insert(session);
            (sessions.len() == 1).then(|| self.bus.subscribe_request(vec![self.bus.channels.user(user)]))
        };
        if let Some(confirmed) = confirmed {
            let _ = confirmed.await;
        }
    }

    /// Attaches a session to rooms, each with the last seq the caller read from PostgreSQL. Returns,
    /// per room, the seq after which the live stream will continue for this session (at least the
    /// given one). Rooms new to this node are subscribed, then caught up from PostgreSQL so nothing
    /// committed between the read and the subscription is missed.
    pub async fn attach(&self, session: SessionId, rooms: &[(Uuid, i64)]) -> Vec<(Uuid, i64)> {
        let (fresh, effective, confirmed) = self.join(&mut self.write(), session, rooms);
        if !fresh.is_empty() {
            let _ = confirmed.await;
            self.catch_up(&fresh);
        }
        effective
    }

    /// Puts a session into rooms, under the caller's write lock. Returns the rooms new to this node,
    /// the per-room stream positions, and the confirmation of the SUBSCRIBE for the new rooms, which
    /// is requested here, under the lock, so it is ordered with every other subscription change.
    fn join(
        &self,
        state: &mut State,
        session: SessionId,
        rooms: &[(Uuid, i64)],
    ) -> (Vec<Uuid>, Vec<(Uuid, i64)>, oneshot::Receiver<bool>) {
        let mut fresh = Vec::new();
        let mut effective = Vec::with_capacity(rooms.len());
        if let Some((recipient, joined)) = state.sessions.get_mut(&session) {
            let recipient = recipient.clone();
            joined.extend(rooms.iter().map(|(room, _)| *room));
            for &(room, baseline) in rooms {
                let entry = state.rooms.entry(room).or_insert_with(|| {
                    fresh.push(room);
                    RoomEntry { recipients: HashMap::new(), last_seq: AtomicI64::new(baseline) }
                });
                entry.recipients.insert(session, recipient.clone());
                effective.push((room, baseline.max(entry.last_seq.load(Ordering::Acquire))));
            }
        }
        let confirmed = self.bus.subscribe_request(fresh.iter().map(|r| self.bus.channels.room(*r)).collect());
        (fresh, effective, confirmed)
    }

    fn catch_up(&self, rooms: &[Uuid]) {
        for room in rooms {
            // A send fails only once the shard task has ended, i.e. the node is shutting down.
            self.shard(*room).send(ShardWork::CatchUp { room: *room }).ok();
        }
    }

    /// Detaches a session from one room; unsubscribes the room if no local socket needs it.
    pub fn detach(&self, session: SessionId, room: Uuid) {
        let mut state = self.write();
        if let Some((_, joined)) = state.sessions.get_mut(&session) {
            joined.remove(&room);
        }
        if Self::remove_from_room(&mut state, session, room) {
            self.bus.unsubscribe(vec![self.bus.channels.room(room)]);
        }
    }

    fn remove_from_room(state: &mut State, session: SessionId, room: Uuid) -> bool {
        match state.rooms.get_mut(&room) {
            Some(entry) => {
                entry.recipients.remove(&session);
                if entry.recipients.is_empty() {
                    state.rooms.remove(&room);
                    return true;
                }
                false
            }
            None => false,
        }
    }

    /// Removes a socket everywhere; unsubscribes what no longer has a local listener.
    pub fn unregister(&self, session: SessionId) {
        let mut channels = Vec::new();
        let mut state = self.write();
        let Some((recipient, joined)) = state.sessions.remove(&session) else { return };
        for room in joined {
            if Self::remove_from_room(&mut state, session, room) {
                channels.push(self.bus.channels.room(room));
            }
        }
        if let Some(sessions) = state.users.get_mut(&recipient.user) {
            sessions.remove(&session);
            if sessions.is_empty() {
                state.users.remove(&recipient.user);
                channels.push(self.bus.channels.user(recipient.user));
            }
        }
        self.bus.unsubscribe(channels);
    }

    /// Closes the user's local sessions that authenticated with a token older than `generation`.
    pub fn close_user_sessions_before(&self, user: Uuid, generation: i32, code: u16) {
        let state = self.read();
        for session in state.users.get(&user).into_iter().flatten() {
            if let Some((recipient, _)) = state.sessions.get(session) {
                if recipient.control.token_generation.load(Ordering::Acquire) < generation {
                    recipient.control.close(code);
                }
            }
        }
    }

    /// Every local session, for a drain.
    pub fn close_all(&self, code: u16) {
        for (recipient, _) in self.read().sessions.values() {
            recipient.control.close(code);
        }
    }

    fn shard(&self, room: Uuid) -> &mpsc::UnboundedSender<ShardWork> {
        let index = (room.as_u128() % self.shards.len() as u128) as usize;
        &self.shards[index]
    }

    /// Hands an envelope to this node's sockets. Called for everything the bus delivers, and for
    /// what this node published while the bus was down.
    pub fn dispatch(self: &Arc<Self>, envelope: Envelope) {
        let Envelope { header, frame } = envelope;
        match (header.kind, header.room_id) {
            (Kind::Message, Some(room)) => {
                let seq = header.seq.unwrap_or(0);
                self.shard(room).send(ShardWork::Message { room, seq, frame, at_us: header.at_us }).ok();
            }
            // `user_id` on a room event names a user who hears about it on their own channel instead
            // (membership changes), so they do not get it twice.
            (Kind::Event, Some(room)) => self.deliver_room(room, &frame, false, header.user_id),
            (Kind::Ephemeral, Some(room)) => self.deliver_room(room, &frame, true, header.user_id),
            (Kind::RoomDeleted, Some(room)) => {
                self.deliver_room(room, &frame, false, None);
                self.drop_room(room);
            }
            (Kind::MemberAdded, Some(room)) => {
                if let Some(user) = header.user_id {
                    self.deliver_user(user, &frame);
                    self.add_user_to_room(user, room, header.seq.unwrap_or(0));
                }
            }
            (Kind::MemberRemoved, Some(room)) => {
                if let Some(user) = header.user_id {
                    self.deliver_user(user, &frame);
                    self.remove_user_from_room(user, room);
                }
            }
            (Kind::Presence, _) => self.deliver_presence(&header.rooms, header.user_id, &frame),
            (Kind::Event, None) => {
                if let Some(user) = header.user_id {
                    self.deliver_user(user, &frame);
                }
            }
            _ => tracing::debug!(?header, "bus envelope without a destination dropped"),
        }
    }

    fn add_user_to_room(self: &Arc<Self>, user: Uuid, room: Uuid, baseline: i64) {
        let mut state = self.write();
        let sessions: Vec<SessionId> = state.users.get(&user).map(|s| s.iter().copied().collect()).unwrap_or_default();
        let mut fresh = Vec::new();
        let mut confirmations = Vec::new();
        for session in sessions {
            let (new_rooms, _, confirmed) = self.join(&mut state, session, &[(room, baseline)]);
            fresh.extend(new_rooms);
            confirmations.push(confirmed);
        }
        drop(state);
        if !fresh.is_empty() {
            // This runs on the bus loop, which must not wait: the catch-up that closes the window
            // before the subscription took effect runs in the background.
            let hub = self.clone();
            tokio::spawn(async move {
                for confirmed in confirmations {
                    let _ = confirmed.await;
                }
                hub.catch_up(&fresh);
            });
        }
    }

    fn remove_user_from_room(&self, user: Uuid, room: Uuid) {
        let sessions: Vec<SessionId> =
            self.read().users.get(&user).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for session in sessions {
            self.detach(session, room);
        }
    }

    fn drop_room(&self, room: Uuid) {
        let mut state = self.write();
        if let Some(entry) = state.rooms.remove(&room) {
            for session in entry.recipients.keys() {
                if let Some((_, joined)) = state.sessions.get_mut(session) {
                    joined.remove(&room);
                }
            }
            self.bus.unsubscribe(vec![self.bus.channels.room(room)]);
        }
    }
}

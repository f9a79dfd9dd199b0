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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU16, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use crate::bus::{Bus, BusEvent, Envelope, Kind};
use crate::clock::unix_us;
use crate::db::{self, DbPool};
use crate::metrics::Metrics;
use crate::protocol::ws::{close_code, ServerEvent};
use crate::protocol::Message;

pub type SessionId = Uuid;

/// What the hub queues for a socket: one allocation per event, shared by every recipient. A queue slot
/// is then one pointer, and a socket's queue block (32 slots, allocated when the socket opens, plus a
/// second once it has carried 32 frames) costs a few hundred bytes instead of a few KiB.
pub type Outbound = Arc<Queued>;

#[derive(Debug)]
pub struct Queued {
    pub frame: ByteString,
    /// For a room's message, `(room, seq)`: the session drops it if it already has this seq (e.g.
    /// from a `sync`).
    pub stream: Option<(Uuid, i64)>,
}

impl Queued {
    fn frame(frame: &ByteString) -> Outbound {
        Arc::new(Queued { frame: frame.clone(), stream: None })
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

/// One frame for some of one worker's sockets, crossing threads in one piece.
struct Delivery {
    recipients: Vec<Recipient>,
    item: Outbound,
    ephemeral: bool,
}

/// Recipients of one frame, grouped by the worker thread their sockets run on.
#[derive(Default)]
struct Batches(Vec<Vec<Recipient>>);

impl Batches {
    fn push(&mut self, recipient: &Recipient) {
        let index = recipient.worker.0;
        if index >= self.0.len() {
            self.0.resize_with(index + 1, Vec::new);
        }
        self.0[index].push(recipient.clone());
    }
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

enum ShardWork {
    Message { room: Uuid, seq: i64, frame: ByteString, at_us: i64 },
    CatchUp { room: Uuid },
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
            tokio::spawn(shard_loop(Arc::downgrade(hub), rx));
        }
        tokio::spawn(bus_loop(Arc::downgrade(hub), self.bus_events));
        tokio::spawn(degraded_poller(Arc::downgrade(hub), self.poll_interval));
    }
}

const SHARDS: usize = 8;
const FILL_BATCH: i64 = 500;

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

    /// Starts the delivery task of the calling thread, which must be an HTTP worker's (a
    /// `LocalSet`): sockets whose tasks run on this thread get their frames queued from here.
    pub fn add_worker(&self) -> WorkerId {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::task::spawn_local(worker_loop(rx, self.metrics.clone(), self.queue_capacity));
        let mut workers = self.workers.write().unwrap_or_else(|e| e.into_inner());
        workers.push(tx);
        WorkerId(workers.len() - 1)
    }

    /// Hands each worker its share of a frame's recipients. The send fails only if that worker's
    /// thread is gone; its sockets are then gone too, and queueing from here is harmless.
    fn deliver(&self, batches: Batches, item: Outbound, ephemeral: bool) {
        let workers = self.workers.read().unwrap_or_else(|e| e.into_inner());
        for (index, recipients) in batches.0.into_iter().enumerate() {
            if recipients.is_empty() {
                continue;
            }
            let delivery = Delivery { recipients, item: item.clone(), ephemeral };
            let undelivered = match workers.get(index) {
                Some(worker) => worker.send(delivery).err().map(|e| e.0),
                None => Some(delivery),
            };
            if let Some(delivery) = undelivered {
                queue_all(&self.metrics, self.queue_capacity, delivery);
            }
        }
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

    fn deliver_room(&self, room: Uuid, frame: &ByteString, ephemeral: bool, skip_user: Option<Uuid>) {
        let mut batches = Batches::default();
        {
            let state = self.read();
            let Some(entry) = state.rooms.get(&room) else { return };
            for recipient in entry.recipients.values() {
                if Some(recipient.user) != skip_user {
                    batches.push(recipient);
                }
            }
        }
        self.deliver(batches, Queued::frame(frame), ephemeral);
    }

    fn deliver_user(&self, user: Uuid, frame: &ByteString) {
        let mut batches = Batches::default();
        {
            let state = self.read();
            let Some(sessions) = state.users.get(&user) else { return };
            for session in sessions {
                if let Some((recipient, _)) = state.sessions.get(session) {
                    batches.push(recipient);
                }
            }
        }
        self.deliver(batches, Queued::frame(frame), false);
    }

    /// A presence change goes once to each local session that shares a room with the user.
    fn deliver_presence(&self, rooms: &[Uuid], user: Option<Uuid>, frame: &ByteString) {
        let mut batches = Batches::default();
        {
            let state = self.read();
            let mut seen = HashSet::new();
            for room in rooms {
                let Some(entry) = state.rooms.get(room) else { continue };
                for (session, recipient) in &entry.recipients {
                    if Some(recipient.user) != user && seen.insert(*session) {
                        batches.push(recipient);
                    }
                }
            }
        }
        self.deliver(batches, Queued::frame(frame), true);
    }

    /// Hands a room's message to its local sockets and advances the room's stream.
    fn deliver_message(&self, room: Uuid, seq: i64, frame: &ByteString, at_us: i64) {
        let mut batches = Batches::default();
        {
            let state = self.read();
            let Some(entry) = state.rooms.get(&room) else { return };
            if entry.last_seq.fetch_max(seq, Ordering::AcqRel) >= seq {
                return;
            }
            for recipient in entry.recipients.values() {
                batches.push(recipient);
            }
        }
        self.deliver(batches, Arc::new(Queued { frame: frame.clone(), stream: Some((room, seq)) }), false);
        self.metrics.fanout_latency_seconds.observe((unix_us() - at_us).max(0) as f64 / 1e6);
    }

    fn room_last_seq(&self, room: Uuid) -> Option<i64> {
        self.read().rooms.get(&room).map(|e| e.last_seq.load(Ordering::Acquire))
    }

    /// Delivers messages after the room's stream position, up to `upto` (or everything), from PostgreSQL.
    async fn fill_from_db(&self, room: Uuid, upto: Option<i64>) {
        loop {
            let Some(last) = self.room_last_seq(room) else { return };
            if upto.is_some_and(|u| last >= u) {
                return;
            }
            let limit = upto.map_or(FILL_BATCH, |u| (u - last).min(FILL_BATCH));
            let rows = match self.db.get().await {
                Ok(mut conn) => db::messages::after(&mut conn, room, last, limit).await,
                Err(e) => {
                    tracing::warn!(error = %e, %room, "gap fill: no database connection");
                    return;
                }
            };
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, %room, "gap fill failed");
                    return;
                }
            };
            if rows.is_empty() {
                return;
            }
            let full_batch = rows.len() as i64 == limit;
            for row in rows {
                let message = Message::from(row);
                let seq = message.seq;
                let at_us = message.created_at.timestamp_micros();
                let frame = ByteString::from(ServerEvent::Message(message).to_frame());
                self.metrics.gap_filled_messages_total.inc();
                self.deliver_message(room, seq, &frame, at_us);
            }
            if !full_batch {
                return;
            }
        }
    }

    /// Re-reads the memberships of local users from PostgreSQL and attaches/detaches their sessions
    /// to match. Membership events published while the bus was down were lost; without this a
    /// removed member would keep receiving the room (and an added one would not).
    pub async fn reconcile_memberships(&self) {
        let sessions: Vec<(SessionId, Uuid, HashSet<Uuid>)> =
            self.read().sessions.iter().map(|(id, (r, rooms))| (*id, r.user, rooms.clone())).collect();
        if sessions.is_empty() {
            return;
        }
        let mut users: Vec<Uuid> = sessions.iter().map(|(_, user, _)| *user).collect();
        users.sort();
        users.dedup();
        let rows = match self.db.get().await {
            Ok(mut conn) => db::rooms::memberships_of(&mut conn, &users).await,
            Err(e) => {
                tracing::warn!(error = %e, "membership reconcile: no database connection");
                return;
            }
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "membership reconcile: query failed; the next one retries");
                return;
            }
        };
        let mut wanted: HashMap<Uuid, HashMap<Uuid, i64>> = HashMap::new();
        for m in rows {
            wanted.entry(m.user_id).or_default().insert(m.room_id, m.last_seq);
        }
        for (session, user, joined) in sessions {
            let should = wanted.remove(&user).unwrap_or_default();
            for room in joined.iter().filter(|r| !should.contains_key(r)) {
                self.detach(session, *room);
            }
            let missing: Vec<(Uuid, i64)> =
                should.iter().filter(|(room, _)| !joined.contains(room)).map(|(r, s)| (*r, *s)).collect();
            if !missing.is_empty() {
                self.attach(session, &missing).await;
            }
            wanted.insert(user, should);
        }
    }

    /// Queues a catch-up for every room with local listeners (after the bus reconnects).
    pub fn catch_up_all(&self) {
        let rooms: Vec<Uuid> = self.read().rooms.keys().copied().collect();
        self.catch_up(&rooms);
    }
}

/// Whether a frame goes into a socket's queue.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Queue,
    Shed,
}

/// Under pressure, ephemeral frames (typing, presence) are shed before any message: once a queue is
/// three-quarters full, only durable frames still go in, so the last quarter is kept for them.
fn admit(free_slots: usize, capacity: usize, ephemeral: bool) -> Admit {
    if ephemeral && free_slots < capacity / 4 {
        Admit::Shed
    } else {
        Admit::Queue
    }
}

/// One HTTP worker's delivery task: queues each batch to its sockets, on their own thread.
async fn worker_loop(mut inbox: mpsc::UnboundedReceiver<Delivery>, metrics: Arc<Metrics>, queue_capacity: usize) {
    let mut batch = Vec::new();
    while inbox.recv_many(&mut batch, 64).await > 0 {
        for delivery in batch.drain(..) {
            queue_all(&metrics, queue_capacity, delivery);
        }
    }
}

fn queue_all(metrics: &Metrics, queue_capacity: usize, delivery: Delivery) {
    let Delivery { recipients, item, ephemeral } = delivery;
    for recipient in &recipients {
        offer(metrics, queue_capacity, recipient, item.clone(), ephemeral);
    }
}

/// Queues a frame to one recipient. A full queue on a durable frame closes the socket (4008):
/// the client resyncs on reconnect. Ephemeral frames are shed once the queue is three-quarters full.
fn offer(metrics: &Metrics, queue_capacity: usize, recipient: &Recipient, item: Outbound, ephemeral: bool) {
    if admit(recipient.tx.capacity(), queue_capacity, ephemeral) == Admit::Shed {
        metrics.fanout_shed_total.inc();
        return;
    }
    match recipient.tx.try_send(item) {
        Ok(()) => metrics.fanout_frames_total.inc(),
        Err(mpsc::error::TrySendError::Full(_)) if ephemeral => metrics.fanout_shed_total.inc(),
        Err(mpsc::error::TrySendError::Full(_)) => {
            if recipient.control.close_code().is_none() {
                metrics.slow_consumer_closes_total.inc();
            }
            recipient.control.close(close_code::SLOW_CONSUMER);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

async fn shard_loop(hub: Weak<Hub>, mut rx: mpsc::UnboundedReceiver<ShardWork>) {
    while let Some(work) = rx.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match work {
            ShardWork::Message { room, seq, frame, at_us } => {
                let Some(last) = hub.room_last_seq(room) else { continue };
                if seq <= last {
                    continue;
                }
                if seq > last + 1 {
                    // Something before this one has not arrived (a race between senders on
                    // different nodes, or a lost publish). It is committed, since seq order is
                    // commit order: fetch it.
                    hub.fill_from_db(room, Some(seq - 1)).await;
                }
                hub.deliver_message(room, seq, &frame, at_us);
            }
            ShardWork::CatchUp { room } => hub.fill_from_db(room, None).await,
        }
    }
}

async fn bus_loop(hub: Weak<Hub>, mut events: mpsc::UnboundedReceiver<BusEvent>) {
    while let Some(event) = events.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match event {
            BusEvent::Message(envelope) => hub.dispatch(envelope),
            BusEvent::Connected => {
                hub.catch_up_all();
                let hub = hub.clone();
                tokio::spawn(async move { hub.reconcile_memberships().await });
            }
            BusEvent::Disconnected => {}
        }
    }
}

/// While the bus is down, reads each local room's `last_seq` from PostgreSQL on an interval and
/// catches up the rooms that moved: chat across nodes keeps working, only slower.
async fn degraded_poller(hub: Weak<Hub>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        if hub.bus.is_connected() {
            continue;
        }
        let positions: Vec<(Uuid, i64)> =
            hub.read().rooms.iter().map(|(id, e)| (*id, e.last_seq.load(Ordering::Acquire))).collect();
        if positions.is_empty() {
            continue;
        }
        hub.metrics.degraded_polls_total.inc();
        hub.reconcile_memberships().await;
        let ids: Vec<Uuid> = positions.iter().map(|(id, _)| *id).collect();
        let heads = match hub.db.get().await {
            Ok(mut conn) => db::rooms::last_seqs(&mut conn, &ids).await.unwrap_or_default(),
            Err(_) => continue,
        };
        for (room, head) in heads {
            if positions.iter().any(|(id, last)| *id == room && head > *last) {
                hub.shard(room).send(ShardWork::CatchUp { room }).ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_frames_are_shed_before_messages() {
        // An empty queue takes everything.
        assert_eq!(admit(16, 16, true), Admit::Queue);
        assert_eq!(admit(16, 16, false), Admit::Queue);
        // Three-quarters full: typing and presence are shed, messages still queue.
        assert_eq!(admit(3, 16, true), Admit::Shed);
        assert_eq!(admit(3, 16, false), Admit::Queue);
        // Full: messages hit the slow-consumer path (try_send fails), ephemeral ones are shed.
        assert_eq!(admit(0, 16, true), Admit::Shed);
        assert_eq!(admit(0, 16, false), Admit::Queue);
    }
}

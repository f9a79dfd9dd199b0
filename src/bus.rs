//! The Redis pub/sub bus: one subscriber connection per node (never one per socket), and publishing
//! through the `deadpool-redis` pool.
//!
//! Channels: `{prefix}room:{room_id}` (everything said in a room), `{prefix}user:{user_id}` (what is
//! addressed to one user: membership changes, their own receipts), `{prefix}presence` (online/offline
//! transitions, with the rooms they matter to). Subscriptions are reference-counted by the hub:
//! SUBSCRIBE on the first local socket that needs a channel, UNSUBSCRIBE after the last.
//!
//! A payload is one header line of JSON (routing: kind, room, seq) and then the client frame, already
//! serialized: the receiving node forwards those bytes to every local socket untouched.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use bytestring::ByteString;
use deadpool_redis::redis;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::clock::unix_us;
use crate::kv::{Conn, Names, Redis};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new message: delivered in `seq` order, gaps filled from PostgreSQL.
    Message,
    /// Any other room event (edit, delete, membership, receipt…): delivered as is.
    Event,
    /// Typing: shed first under pressure, never sent back to its author's sessions.
    Ephemeral,
    /// The room is closed: deliver, then drop the room from every local session.
    RoomDeleted,
    /// `user_id` joined `room_id`: their live sessions start receiving it.
    MemberAdded,
    /// `user_id` left or was removed from `room_id`: their sessions stop receiving it.
    MemberRemoved,
    /// `user_id` came online or went offline; `rooms` are the rooms whose members care.
    Presence,
}

/// Routing information that travels in front of the frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<Uuid>,
    /// Unix microseconds when the event was committed/published, for latency metrics.
    pub at_us: i64,
}

impl Header {
    pub fn new(kind: Kind) -> Self {
        Header { kind, room_id: None, seq: None, user_id: None, rooms: Vec::new(), at_us: unix_us() }
    }
}

/// A decoded bus payload: the header and the client frame bytes (shared, never re-serialized).
#[derive(Debug, Clone)]
pub struct Envelope {
    pub header: Header,
    pub frame: ByteString,
}

impl Envelope {
    pub fn new(header: Header, frame: String) -> Self {
        Envelope { header, frame: ByteString::from(frame) }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&self.header).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(self.frame.as_bytes());
        out
    }

    pub fn decode(payload: &[u8]) -> Option<Envelope> {
        let split = payload.iter().position(|b| *b == b'\n')?;
        let header: Header = serde_json::from_slice(&payload[..split]).ok()?;
        let frame = ByteString::try_from(Bytes::copy_from_slice(&payload[split + 1..])).ok()?;
        Some(Envelope { header, frame })
    }
}

/// Channel names under this cluster's prefix (see [`crate::kv::Names`]).
#[derive(Debug, Clone)]
pub struct Channels {
    names: Names,
}

impl Channels {
    pub fn room(&self, room: Uuid) -> String {
        self.names.room_channel(room)
    }
    pub fn user(&self, user: Uuid) -> String {
        self.names.user_channel(user)
    }
    pub fn presence(&self) -> String {
        self.names.presence_channel()
    }
}

/// What the subscriber hands to the hub.
pub enum BusEvent {
    Message(Envelope),
    /// The connection is up and every wanted channel is subscribed: fill gaps from PostgreSQL.
    Connected,
    /// The connection dropped: deliveries now come from PostgreSQL polling until it is back.
    Disconnected,
}

enum Command {
    Subscribe(Vec<String>, oneshot::Sender<bool>),
    Unsubscribe(Vec<String>),
}

/// Handle to the bus: publish, and ask the subscriber task to (un)subscribe.
#[derive(Clone)]
pub struct Bus {
    pub channels: Channels,
    redis: Arc<Redis>,
    /// One multiplexed connection kept for PUBLISH and presence: concurrent commands pipeline on
    /// it, and a pool's per-checkout health check (UNWATCH + PING, a round trip) is paid once
    /// rather than for every command. Replaced after an error, or when the primary moved (kept
    /// with the primary's generation it was made for).
    shared: Arc<tokio::sync::Mutex<Option<(u64, Conn)>>>,
    /// When the last attempt to make that connection failed (see [`CONNECT_FAILED_QUIET`]).
    connect_failed: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    commands: mpsc::UnboundedSender<Command>,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Bus {
    /// Builds the bus and its subscriber, which does not run yet: the node starts it on the thread
    /// that serves its sockets (`startup::NodeTasks`). Events for the hub arrive on the receiver.
    pub fn new(redis: Arc<Redis>, metrics: Arc<Metrics>) -> (Bus, Subscriber, mpsc::UnboundedReceiver<BusEvent>) {
        // Unbounded on purpose. Commands: one per subscription change, made under the hub's lock,
        // which must not wait on the subscriber (it may be reconnecting). Events: what Redis already
        // delivered; the hub drains them on the same thread, and a bound would make the subscriber
        // stop reading, which Redis answers by dropping the connection (output buffer limit).
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let channels = Channels { names: redis.names.clone() };
        let subscriber = Subscriber {
            redis: redis.clone(),
            commands: command_rx,
            events,
            wanted: HashSet::from([channels.presence()]),
            connected: connected.clone(),
            metrics: metrics.clone(),
        };
        let bus = Bus {
            channels,
            redis,
            shared: Arc::default(),
            connect_failed: Arc::default(),
            commands,
            connected,
            metrics,
        };
        (bus, subscriber, event_rx)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Publishes one envelope. A failure is counted and logged, not returned: the event is already
    /// stored (or is ephemeral), and receivers catch up from PostgreSQL.
    pub async fn publish(&self, channel: &str, envelope: &Envelope) -> bool {
        let payload = envelope.encode();
        let result: Result<i64, String> = async {
            let mut conn = self.connection().await?;
            // Sharded in cluster mode: the message goes to the channel's shard only, not to every node
            // of the cluster.
            let publish = if self.redis.is_cluster() { "SPUBLISH" } else { "PUBLISH" };
            let sent = redis::cmd(publish).arg(channel).arg(payload).query_async(&mut conn).await;
            if sent.is_err() {
                *self.shared.lock().await = None;
            }
            sent.map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(_) => true,
            Err(error) => {
                self.metrics.redis_publish_errors_total.inc();
                tracing::warn!(%error, channel, "publish failed; receivers will catch up from PostgreSQL");
                false
            }
        }
    }

    /// Forgets the shared connection after an error that broke it; the next caller takes a fresh one.
    /// (If another task holds the slot right now, it is already replacing or using it.)
    pub fn forget_connection_if_broken(&self, error: &redis::RedisError) {
        if error.is_unrecoverable_error() || error.is_io_error() || error.is_connection_dropped() {
            if let Ok(mut slot) = self.shared.try_lock() {
                *slot = None;
            }
        }
    }

    /// The node's shared command connection: multiplexed, so concurrent commands (every PUBLISH,
    /// presence) pipeline on it without a pool checkout each.
    pub async fn connection(&self) -> Result<Conn, String> {
        let mut slot = self.shared.lock().await;
        let generation = self.redis.generation();
        if let Some((made_for, conn)) = slot.as_ref() {
            if *made_for == generation {
                return Ok(conn.clone());
            }
        }
        let failed_recently =
            |failed: &Option<std::time::Instant>| failed.is_some_and(|at| at.elapsed() < CONNECT_FAILED_QUIET);
        if failed_recently(&self.connect_failed.lock().unwrap_or_else(|e| e.into_inner())) {
            return Err("Redis unreachable (the last attempt to connect failed under a second ago)".into());
        }
        // Boxed: connecting is a large future, and only this rare path needs it. Inline, it would make
        // every publish (and every command future that publishes) several KiB bigger.
        let conn = match Box::pin(self.redis.connection()).await {
            Ok(conn) => conn,
            Err(error) => {
                *self.connect_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
                return Err(error);
            }
        };
        *slot = Some((generation, conn.clone()));
        Ok(conn)
    }

    /// Asks to subscribe to `channels` and returns at once; the receiver resolves once Redis
    /// confirmed (true), or at once with false while the bus is down. Requests are applied in the
    /// order they are made, so callers that order them under a lock get that order in Redis.
    pub fn subscribe_request(&self, channels: Vec<String>) -> oneshot::Receiver<bool> {
        let (ack, done) = oneshot::channel();
        if channels.is_empty() {
            let _ = ack.send(true);
        } else if let Err(mpsc::error::SendError(Command::Subscribe(_, ack))) =
            self.commands.send(Command::Subscribe(channels, ack))
        {
            let _ = ack.send(false);
        }
        done
    }

    /// Subscribes and waits for the confirmation (see `subscribe_request`).
    pub async fn subscribe(&self, channels: Vec<String>) -> bool {
        self.subscribe_request(channels).await.unwrap_or(false)
    }

    pub fn unsubscribe(&self, channels: Vec<String>) {
        if !channels.is_empty() {
            let _ = self.commands.send(Command::Unsubscribe(channels));
        }
    }
}

/// After a reconnect, when the hub catches up from PostgreSQL a second time. The other nodes notice
/// the same change on their own timers (a Sentinel's new primary within a second, the cluster's new
/// slot owners within two), and what they publish to the old server until then reaches no one here:
/// catching up again once that window has passed delivers it without waiting for the room's next
/// message.
const CATCH_UP_AGAIN: Duration = Duration::from_millis(2500);

/// How often the subscriber PINGs Redis on its pub/sub connection, and how long it waits for the
/// answer before it counts the connection as lost: a partition is noticed within 5 s, and the node
/// then serves in degraded mode (polling PostgreSQL) instead of hearing nothing.
const PUBSUB_PING_EVERY: Duration = Duration::from_secs(2);
const PUBSUB_PING_TIMEOUT: Duration = Duration::from_secs(3);
/// A SUBSCRIBE or UNSUBSCRIBE that gets no answer in this time ends the connection (the bus task
/// would otherwise wait on it, and every subscription request behind it).
const PUBSUB_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed attempt to connect for commands, how long others fail at once instead of each
/// waiting out the connect timeout in turn (they queue on the shared connection's lock: sends on a
/// node cut off from Redis took the timeout once per send, one after the other).
const CONNECT_FAILED_QUIET: Duration = Duration::from_secs(1);

/// The one pub/sub connection of this node, reconnecting with backoff. [`Subscriber::run`] is its
/// task; until it runs, (un)subscribe requests wait in its inbox.
pub struct Subscriber {
    redis: Arc<Redis>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<BusEvent>,
    /// Every channel some local socket needs; resubscribed in one command after a reconnect.
    wanted: HashSet<String>,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Subscriber {
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.connect_and_serve().await {
                Ok(()) => return, // the node is shutting down: every Bus handle is gone
                Err(error) => {
                    self.metrics.redis_subscribe_errors_total.inc();
                    if self.connected.swap(false, Ordering::Relaxed) {
                        self.metrics.redis_connected.set(0);
                        tracing::warn!(%error, "pub/sub connection lost; polling PostgreSQL until it is back");
                        if self.events.send(BusEvent::Disconnected).is_err() {
                            return;
                        }
                    }
                }
            }
            // While down, keep answering (un)subscribe requests so no socket waits on us.
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    command = self.commands.recv() => match command {
                        Some(command) => self.apply_offline(command),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Hands a payload to the hub; false once the hub is gone (the node is shutting down).
    fn forward(&self, payload: &[u8], channel: &str) -> bool {
        match Envelope::decode(payload) {
            Some(envelope) => {
                let transit = (unix_us() - envelope.header.at_us).max(0) as f64 / 1e6;
                self.metrics.bus_transit_seconds.observe(transit);
                self.events.send(BusEvent::Message(envelope)).is_ok()
            }
            None => {
                tracing::warn!(channel, "undecodable bus payload dropped");
                true
            }
        }
    }

    fn apply_offline(&mut self, command: Command) {
        match command {
            Command::Subscribe(channels, ack) => {
                self.wanted.extend(channels);
                let _ = ack.send(false);
            }
            Command::Unsubscribe(channels) => {
                for channel in channels {
                    self.wanted.remove(&channel);
                }
            }
        }
        self.metrics.subscribed_channels.set(self.wanted.len() as i64);
    }

    /// Serves one connection until it fails (Err) or the node shuts down (Ok).
    async fn connect_and_serve(&mut self) -> Result<(), String> {
        if self.redis.is_cluster() {
            return Box::pin(self.serve_sharded()).await;
        }
        // Read before connecting: a move of the primary from here on ends this connection.
        let mut moves = self.redis.changes();
        moves.borrow_and_update();
        let pubsub = tokio::time::timeout(Duration::from_secs(5), self.redis.pubsub())
            .await
            .map_err(|_| "connect timed out".to_owned())??;
        let (mut sink, mut stream) = pubsub.split();
        let wanted: Vec<String> = self.wanted.iter().cloned().collect();
        // One SUBSCRIBE for everything, in chunks so a huge list stays a reasonable command.
        for chunk in wanted.chunks(1000) {
            tokio::time::timeout(PUBSUB_COMMAND_TIMEOUT, sink.subscribe(chunk))
                .await
                .map_err(|_| "SUBSCRIBE timed out".to_owned())?
                .map_err(|e| e.to_string())?;
        }
        // A subscriber only reads: over a connection whose peer is gone without a word (a network
        // partition, a host that died), nothing ever fails, and the node would wait for messages
        // forever while believing itself connected. A PING that is not answered in time ends it.
        let mut heartbeat = tokio::time::interval(PUBSUB_PING_EVERY);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        self.connected.store(true, Ordering::Relaxed);
        self.metrics.redis_connected.set(1);
        self.metrics.redis_reconnects_total.inc();
        self.metrics.subscribed_channels.set(self.wanted.len() as i64);
        tracing::info!(channels = self.wanted.len(), "pub/sub connected");
        if self.events.send(BusEvent::Connected).is_err() {
            return Ok(());
        }
        let again = tokio::time::sleep(CATCH_UP_AGAIN);
        tokio::pin!(again);
        let mut caught_up_again = false;
        loop {
            tokio::select! {
                _ = &mut again, if !caught_up_again => {
                    caught_up_again = true;
                    if self.events.send(BusEvent::Connected).is_err() {
                        return Ok(());
                    }
                }
                _ = moves.changed() => return Err("the Redis primary moved".into()),
                _ = heartbeat.tick() => {
                    match tokio::time::timeout(PUBSUB_PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(format!("PING on the pub/sub connection failed: {e}")),
                        Err(_) => return Err(format!("no answer to PING within {PUBSUB_PING_TIMEOUT:?}: Redis unreachable")),
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { return Err("pub/sub stream ended".into()) };
                    if !self.forward(message.get_payload_bytes(), message.get_channel_name()) {
                        return Ok(());
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ok(()) };
                    match command {
                        Command::Subscribe(channels, ack) => {
                            let fresh: Vec<String> = channels.into_iter().filter(|c| self.wanted.insert(c.clone())).collect();
                            let ok = fresh.is_empty()
                                || matches!(tokio::time::timeout(PUBSUB_COMMAND_TIMEOUT, sink.subscribe(&fresh)).await, Ok(Ok(())));
                            let _ = ack.send(ok);
                            self.metrics.subscribed_channels.set(self.wanted.len() as i64);
                            if !ok {
                                return Err("SUBSCRIBE failed".into());
                            }
                        }
                        Command::Unsubscribe(channels) => {
                            let gone: Vec<String> = channels.into_iter().filter(|c| self.wanted.remove(c)).collect();
                            self.metrics.subscribed_channels.set(self.wanted.len() as i64);
                            if !gone.is_empty()
                                && !matches!(tokio::time::timeout(PUBSUB_COMMAND_TIMEOUT, sink.unsubscribe(&gone)).await, Ok(Ok(())))
                            {
                                return Err("UNSUBSCRIBE failed".into());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Channels grouped so that each group is one slot: by partition (the presence channel alone).
fn by_slot(names: &Names, channels: impl IntoIterator<Item = String>) -> Vec<Vec<String>> {
    let mut groups: HashMap<Option<u16>, Vec<String>> = HashMap::new();
    for channel in channels {
        groups.entry(names.partition_of_channel(&channel)).or_default().push(channel);
    }
    groups.into_values().flat_map(|group| group.chunks(500).map(<[String]>::to_vec).collect::<Vec<_>>()).collect()
}

/// The sharded subscriber's heartbeat, as [`PUBSUB_PING_EVERY`] is the single server's: one PING to
/// every primary over the subscriber's own connections (those that hold the subscriptions; RESP3
/// answers a command between pushes). A primary that stops answering without closing anything (a
/// stopped process, a host cut off) would otherwise leave the node waiting for its messages while
/// it believes itself connected, for as long as the cluster takes to fail it over, or forever.
async fn ping_primaries(conn: &mut redis::cluster_async::ClusterConnection) -> Result<(), String> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
    let route = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)));
    match tokio::time::timeout(PUBSUB_PING_TIMEOUT, conn.route_command(redis::cmd("PING"), route)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("PING on the sharded pub/sub connection failed: {e}")),
        Err(_) => Err(format!("a primary did not answer PING within {PUBSUB_PING_TIMEOUT:?}: unreachable")),
    }
}

/// The primaries' slot ranges, as one node of the cluster sees them. Bounded by its own timeout,
/// not only the client's response timeout (`CHORUS_DB_POOL_TIMEOUT_MS`, maybe long): the
/// subscriber's loop waits on it.
async fn slot_owners(conn: &mut redis::cluster_async::ClusterConnection) -> Result<Vec<(i64, i64, String)>, String> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
    let asking = conn.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), route);
    let value = tokio::time::timeout(PUBSUB_PING_TIMEOUT, asking)
        .await
        .map_err(|_| format!("no answer to CLUSTER SLOTS within {PUBSUB_PING_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let redis::Value::Array(ranges) = value else { return Err("CLUSTER SLOTS: not an array".into()) };
    let mut owners = Vec::with_capacity(ranges.len());
    for range in ranges {
        // [start, end, [host, port, id, …], replicas…]
        let redis::Value::Array(fields) = range else { continue };
        let int = |v: Option<&redis::Value>| v.and_then(|v| redis::from_redis_value_ref::<i64>(v).ok());
        let (Some(start), Some(end)) = (int(fields.first()), int(fields.get(1))) else { continue };
        let Some(redis::Value::Array(primary)) = fields.get(2) else { continue };
        let host: String = primary.first().and_then(|v| redis::from_redis_value_ref(v).ok()).unwrap_or_default();
        owners.push((start, end, format!("{host}:{}", int(primary.get(1)).unwrap_or_default())));
    }
    owners.sort();
    Ok(owners)
}

/// How often the sharded subscriber PINGs every primary ([`ping_primaries`]) and compares the
/// cluster's slot owners with those it subscribed under: a replica promoted in place tells its old
/// primary's subscribers nothing at all.
const OWNER_CHECK: Duration = PUBSUB_PING_EVERY;

impl Subscriber {
    /// Cluster mode: sharded pub/sub on a connection of its own. The library does not keep sharded
    /// subscriptions through the cluster's changes (a slot that moves sends `sunsubscribe` and the
    /// channel is forgotten; a resubscription after a reconnect names channels of several slots in
    /// one command and fails; a promoted replica sends nothing), so every such change ends this
    /// connection: the node reconnects, subscribes everything again slot by slot, and the hub
    /// catches up from PostgreSQL, as after any loss of the bus.
    async fn serve_sharded(&mut self) -> Result<(), String> {
        let names = self.redis.names.clone();
        let (push_tx, mut pushes) = mpsc::unbounded_channel();
        let mut conn = tokio::time::timeout(Duration::from_secs(5), self.redis.cluster_subscriber(push_tx))
            .await
            .map_err(|_| "connect timed out".to_owned())??;
        let watch = tokio::time::timeout(Duration::from_secs(5), self.redis.connection())
            .await
            .map_err(|_| "connect timed out".to_owned())??;
        let mut watch = match watch {
            crate::kv::Conn::Cluster(conn) => conn,
            crate::kv::Conn::Plain(_) => return Err("not a cluster".into()),
        };
        let owners = slot_owners(&mut watch).await?;
        // Bounded, here and in the loop: a primary that does not answer (stopped, cut off) would
        // otherwise hold this task, and every subscription request queued behind it, for good.
        for group in by_slot(&names, self.wanted.iter().cloned()) {
            tokio::time::timeout(PUBSUB_COMMAND_TIMEOUT, conn.ssubscribe(&group))
                .await
                .map_err(|_| "SSUBSCRIBE timed out".to_owned())?
                .map_err(|e| e.to_string())?;
        }
        self.connected.store(true, Ordering::Relaxed);
        self.metrics.redis_connected.set(1);
        self.metrics.redis_reconnects_total.inc();
        self.metrics.subscribed_channels.set(self.wanted.len() as i64);
        tracing::info!(channels = self.wanted.len(), "sharded pub/sub connected");
        if self.events.send(BusEvent::Connected).is_err() {
            return Ok(());
        }
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + OWNER_CHECK, OWNER_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let again = tokio::time::sleep(CATCH_UP_AGAIN);
        tokio::pin!(again);
        let mut caught_up_again = false;
        loop {
            tokio::select! {
                _ = &mut again, if !caught_up_again => {
                    caught_up_again = true;
                    if self.events.send(BusEvent::Connected).is_err() {
                        return Ok(());
                    }
                }
                push = pushes.recv() => {
                    let Some(push) = push else { return Err("the cluster connection ended".into()) };
                    match push.kind {
                        redis::PushKind::SMessage => {
                            let payload = push.data.get(1).and_then(|v| match v {
                                redis::Value::BulkString(bytes) => Some(bytes.as_slice()),
                                _ => None,
                            });
                            if !self.forward(payload.unwrap_or_default(), "(sharded)") {
                                return Ok(());
                            }
                        }
                        redis::PushKind::SUnsubscribe => {
                            let channel: Option<String> =
                                push.data.first().and_then(|v| redis::from_redis_value_ref(v).ok());
                            // One we still want: the server dropped it (its slot moved).
                            if channel.is_some_and(|c| self.wanted.contains(&c)) {
                                return Err("a sharded subscription was dropped by the cluster (slot moved)".into());
                            }
                        }
                        redis::PushKind::Disconnection => {
                            return Err("a cluster node's connection dropped".into());
                        }
                        _ => {}
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ok(()) };
                    match command {
                        Command::Subscribe(channels, ack) => {
                            let fresh: Vec<String> = channels.into_iter().filter(|c| self.wanted.insert(c.clone())).collect();
                            let mut ok = true;
                            for group in by_slot(&names, fresh) {
                                ok &= matches!(tokio::time::timeout(PUBSUB_COMMAND_TIMEOUT, conn.ssubscribe(&group)).await, Ok(Ok(())));
                            }
                            let _ = ack.send(ok);
                            self.metrics.subscribed_channels.set(self.wanted.len() as i64);
                            if !ok {
                                return Err("SSUBSCRIBE failed".into());
                            }
                        }
                        Command::Unsubscribe(channels) => {
                            let gone: Vec<String> = channels.into_iter().filter(|c| self.wanted.remove(c)).collect();
                            self.metrics.subscribed_channels.set(self.wanted.len() as i64);
                            for group in by_slot(&names, gone) {
                                if !matches!(tokio::time::timeout(PUBSUB_COMMAND_TIMEOUT, conn.sunsubscribe(&group)).await, Ok(Ok(()))) {
                                    return Err("SUNSUBSCRIBE failed".into());
                                }
                            }
                        }
                    }
                }
                _ = check.tick() => {
                    ping_primaries(&mut conn).await?;
                    if slot_owners(&mut watch).await? != owners {
                        return Err("the cluster's slot owners changed".into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_keeps_frame_bytes() {
        let mut header = Header::new(Kind::Message);
        header.room_id = Some(Uuid::nil());
        header.seq = Some(7);
        let env = Envelope::new(header, r#"{"event":"message","data":{"x":"a\nb"}}"#.to_owned());
        let back = Envelope::decode(&env.encode()).expect("decodes");
        assert_eq!(back.header.seq, Some(7));
        assert_eq!(&*back.frame, &*env.frame);
        assert!(Envelope::decode(b"no newline").is_none());
    }
}

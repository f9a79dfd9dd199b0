//! One chaos user: a Chorus WebSocket (native JSON events at `/api/v1/ws`) that behaves as
//! PROTOCOL.md §10 tells a client to: full-jitter backoff after a failure, 0–1 s after a 1012,
//! `sync` from the last seq it holds without a gap (and again on a live gap), seq de-duplication,
//! later seqs kept until the gap below them fills. It records what the checker needs: every seq
//! received (`last_seen` plus the ones held above a gap), every acknowledged `(room, seq)`, every
//! refusal by error code, and per-second latency of every delivery, live or replayed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use crate::client::{field, unix_nanos};

/// Per-second latency histograms (µs, 2 significant digits: a few KiB each).
fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2)
        .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()))
}

/// What every member task shares: the run's counters, the acknowledged messages, the timeline.
pub struct Shared {
    pub started: Instant,
    /// Per room: the highest seq acknowledged to any sender so far.
    pub acked_head: Vec<AtomicI64>,
    /// Per room: the message id first seen for each seq (a second id for a seq is a conflict).
    ids: Vec<Mutex<HashMap<i64, Uuid>>>,
    /// Every acknowledged send: (room index, seq).
    pub acked: Mutex<Vec<(usize, i64)>>,
    /// Sends answered `ok: false`, by error code.
    pub refused: Mutex<BTreeMap<String, u64>>,
    /// Close codes the server sent ("none" when the connection just ended).
    pub closes: Mutex<BTreeMap<String, u64>>,
    /// Why connection attempts failed (first words of the error).
    pub connect_errors: Mutex<BTreeMap<String, u64>>,
    /// Delivery latency (send → receipt, live or by sync), one histogram per second of the run.
    pub seconds: Mutex<Vec<Histogram<u64>>>,
    pub sent: AtomicU64,
    pub acks: AtomicU64,
    pub unanswered: AtomicU64,
    pub delivered_live: AtomicU64,
    pub delivered_sync: AtomicU64,
    pub wire_duplicates: AtomicU64,
    pub id_conflicts: AtomicU64,
    pub live_gaps: AtomicU64,
    pub reordered: AtomicU64,
    pub syncs: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
}

impl Shared {
    pub fn new(rooms: usize) -> Self {
        Shared {
            started: Instant::now(),
            acked_head: (0..rooms).map(|_| AtomicI64::new(0)).collect(),
            ids: (0..rooms).map(|_| Mutex::new(HashMap::new())).collect(),
            acked: Mutex::new(Vec::new()),
            refused: Mutex::new(BTreeMap::new()),
            closes: Mutex::new(BTreeMap::new()),
            connect_errors: Mutex::new(BTreeMap::new()),
            seconds: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            delivered_live: AtomicU64::new(0),
            delivered_sync: AtomicU64::new(0),
            wire_duplicates: AtomicU64::new(0),
            id_conflicts: AtomicU64::new(0),
            live_gaps: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        }
    }

    fn record_latency(&self, micros: u64) {
        let second = self.started.elapsed().as_secs() as usize;
        if let Ok(mut seconds) = self.seconds.lock() {
            while seconds.len() <= second {
                seconds.push(second_histogram());
            }
            let _ = seconds[second].record(micros.clamp(1, 600_000_000));
        }
    }

    /// Records `id` as the message of `seq` in `room`; false if another id had it.
    fn same_id(&self, room: usize, seq: i64, id: Uuid) -> bool {
        let Ok(mut ids) = self.ids[room].lock() else { return true };
        *ids.entry(seq).or_insert(id) == id
    }

    fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
        if let Ok(mut m) = map.lock() {
            *m.entry(key.to_owned()).or_default() += 1;
        }
    }
}

/// What the sampler and the checker read of one member while it runs.
#[derive(Default)]
pub struct Live {
    pub connected: AtomicBool,
    /// A `sync` is in flight.
    pub syncing: AtomicBool,
    /// Highest seq received with nothing missing below it.
    pub last_seen: AtomicI64,
    /// Seqs held above a gap.
    pub held: AtomicU64,
    pub disconnects: AtomicU64,
}

/// Where a member connects and what it is.
pub struct Spec {
    pub index: usize,
    pub url: String,
    pub token: String,
    pub room: Uuid,
    pub room_index: usize,
    pub payload: usize,
}

/// A member's state at the end: what it received.
pub struct Final {
    pub room_index: usize,
    /// The room's head when it first connected: it is owed everything above.
    pub baseline: i64,
    pub last_seen: i64,
    pub held: BTreeSet<i64>,
}

impl Final {
    pub fn has(&self, seq: i64) -> bool {
        seq <= self.last_seen || self.held.contains(&seq)
    }
}

fn content(size: usize) -> String {
    let mut s = format!("t{}|", unix_nanos());
    while s.len() < size {
        s.push('x');
    }
    s
}

fn latency_us(frame: &str) -> Option<u64> {
    let content = field(frame, "content")?;
    let sent: u128 = content.strip_prefix('t')?.split('|').next()?.parse().ok()?;
    Some((unix_nanos().saturating_sub(sent) / 1000) as u64)
}

/// The first words of an error, for grouping.
fn kind(error: &str) -> String {
    error.split([':', '(']).next().unwrap_or(error).trim().chars().take(60).collect()
}

async fn connect(spec: &Spec) -> Result<(WebSocketStream<TcpStream>, i64), String> {
    let without_scheme = spec.url.strip_prefix("ws://").ok_or("only ws:// URLs are supported")?;
    let host_port = without_scheme.split('/').next().unwrap_or(without_scheme);
    let stream = TcpStream::connect(host_port).await.map_err(|e| format!("tcp: {e}"))?;
    let _ = stream.set_nodelay(true);
    let url = format!("{}?token={}", spec.url, spec.token);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.map_err(|e| format!("upgrade: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let t = t.as_str();
                if !t.starts_with("{\"event\":\"ready\"") {
                    continue;
                }
                let room = spec.room.to_string();
                let head = t
                    .find(&format!("\"room_id\":\"{room}\""))
                    .and_then(|at| field(&t[at..], "last_seq"))
                    .and_then(|v| v.parse().ok())
                    .ok_or("ready without the room")?;
                return Ok((ws, head));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed before ready: {}", frame.map_or(0, |f| u16::from(f.code))))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("before ready: {e}")),
            None => return Err("ended before ready".into()),
        }
    }
}

fn sync_frame(room: Uuid, after: i64) -> Message {
    Message::text(format!(
        "{{\"event\":\"sync\",\"data\":{{\"rooms\":[{{\"room_id\":\"{room}\",\"after_seq\":{after}}}]}},\"ref\":\"sync\"}}"
    ))
}

/// The receiving side of one member: seqs seen, held above a gap, and the sync state.
struct Inbox {
    baseline: Option<i64>,
    last_seen: i64,
    held: BTreeSet<i64>,
    syncing: bool,
    /// Highest seq received on this connection (for order on the live stream).
    connection_max: i64,
}

impl Inbox {
    fn publish(&self, live: &Live) {
        live.last_seen.store(self.last_seen, Ordering::Relaxed);
        live.held.store(self.held.len() as u64, Ordering::Relaxed);
        live.syncing.store(self.syncing, Ordering::Relaxed);
    }
}

enum End {
    Stop,
    Closed(Option<u16>),
    Error,
}

/// Runs one member until `stop` flips. `pause` names the member that stops reading (a slow consumer).
pub async fn run(
    spec: Spec,
    shared: Arc<Shared>,
    live: Arc<Live>,
    mut outgoing: mpsc::Receiver<()>,
    mut stop: watch::Receiver<bool>,
    mut pause: watch::Receiver<Option<usize>>,
) -> Final {
    let mut inbox = Inbox { baseline: None, last_seen: 0, held: BTreeSet::new(), syncing: false, connection_max: 0 };
    let mut attempt: u32 = 0;
    let mut next_ref: u64 = 0;
    let mut sending = true;
    let room = spec.room.to_string();
    let s = &shared;
    while !*stop.borrow() {
        let connected = tokio::time::timeout(Duration::from_secs(10), connect(&spec))
            .await
            .unwrap_or_else(|_| Err("connect timed out".into()));
        let (mut ws, head) = match connected {
            Ok(ok) => ok,
            Err(e) => {
                s.connect_failures.fetch_add(1, Ordering::Relaxed);
                Shared::bump(&s.connect_errors, &kind(&e));
                backoff(&mut attempt, None, &mut stop).await;
                continue;
            }
        };
        s.connects.fetch_add(1, Ordering::Relaxed);
        let up_since = Instant::now();
        inbox.connection_max = 0;
        match inbox.baseline {
            None => {
                inbox.baseline = Some(head);
                inbox.last_seen = head;
            }
            Some(_) if head > inbox.last_seen || !inbox.held.is_empty() => {
                inbox.syncing = ws.send(sync_frame(spec.room, inbox.last_seen)).await.is_ok();
                if inbox.syncing {
                    s.syncs.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(_) => {}
        }
        inbox.publish(&live);
        live.connected.store(true, Ordering::Relaxed);
        let mut in_flight: u64 = 0;
        let mut resync_at: Option<tokio::time::Instant> = None;
        let end = loop {
            if *stop.borrow() {
                break End::Stop;
            }
            let paused = *pause.borrow() == Some(spec.index);
            tokio::select! {
                _ = stop.changed() => break End::Stop,
                changed = pause.changed() => if changed.is_err() { break End::Stop },
                _ = tokio::time::sleep_until(resync_at.unwrap_or_else(tokio::time::Instant::now)), if resync_at.is_some() => {
                    resync_at = None;
                    if ws.send(sync_frame(spec.room, inbox.last_seen)).await.is_err() { break End::Error }
                    s.syncs.fetch_add(1, Ordering::Relaxed);
                }
                out = outgoing.recv(), if !paused && sending => {
                    // The load is over; keep receiving until told to stop.
                    if out.is_none() { sending = false; continue }
                    next_ref += 1;
                    let frame = format!(
                        "{{\"event\":\"send\",\"data\":{{\"room_id\":\"{room}\",\"content\":\"{}\"}},\"ref\":\"{next_ref}\"}}",
                        content(spec.payload)
                    );
                    if ws.send(Message::text(frame)).await.is_err() {
                        break End::Error;
                    }
                    in_flight += 1;
                    s.sent.fetch_add(1, Ordering::Relaxed);
                }
                incoming = ws.next(), if !paused => {
                    let text = match incoming {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Ping(_))) => { let _ = ws.flush().await; continue }
                        Some(Ok(Message::Close(frame))) => break End::Closed(frame.map(|f| u16::from(f.code))),
                        None => break End::Closed(None),
                        Some(Ok(_)) => continue,
                        Some(Err(_)) => break End::Error,
                    };
                    let text = text.as_str();
                    if text.starts_with("{\"event\":\"message\"") {
                        if field(text, "room_id") != Some(room.as_str()) { continue }
                        let (Some(seq), Some(id)) = (
                            field(text, "seq").and_then(|v| v.parse::<i64>().ok()),
                            field(text, "id").and_then(|v| v.parse::<Uuid>().ok()),
                        ) else { continue };
                        if let Some(resync) = receive(s, &spec, &mut inbox, seq, id, text) {
                            if ws.send(sync_frame(spec.room, resync)).await.is_err() { break End::Error }
                            s.syncs.fetch_add(1, Ordering::Relaxed);
                        }
                        inbox.publish(&live);
                    } else if text.starts_with("{\"event\":\"reply\"") {
                        if field(text, "ref") == Some("sync") {
                            if field(text, "ok") != Some("true") {
                                // PostgreSQL away, for example: ask again in a second.
                                Shared::bump(&s.refused, &format!("sync: {}", field(text, "code").unwrap_or("unknown")));
                                resync_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                                continue;
                            }
                            // Several rounds when the server says there is more (PROTOCOL §3.7).
                            if field(text, "has_more") == Some("true") {
                                let from = field(text, "last_seq").and_then(|v| v.parse().ok()).unwrap_or(inbox.last_seen);
                                if ws.send(sync_frame(spec.room, from)).await.is_err() { break End::Error }
                            } else if !inbox.held.is_empty() {
                                // The replay did not fill the gap: ask again from what is held.
                                if ws.send(sync_frame(spec.room, inbox.last_seen)).await.is_err() { break End::Error }
                                s.syncs.fetch_add(1, Ordering::Relaxed);
                            } else {
                                inbox.syncing = false;
                            }
                            inbox.publish(&live);
                            continue;
                        }
                        in_flight = in_flight.saturating_sub(1);
                        if field(text, "ok") == Some("true") {
                            let seq = field(text, "seq").and_then(|v| v.parse::<i64>().ok());
                            let id = field(text, "id").and_then(|v| v.parse::<Uuid>().ok());
                            if let (Some(seq), Some(id)) = (seq, id) {
                                s.acks.fetch_add(1, Ordering::Relaxed);
                                if !s.same_id(spec.room_index, seq, id) {
                                    s.id_conflicts.fetch_add(1, Ordering::Relaxed);
                                }
                                if let Ok(mut acked) = s.acked.lock() { acked.push((spec.room_index, seq)) }
                                s.acked_head[spec.room_index].fetch_max(seq, Ordering::Relaxed);
                            }
                        } else {
                            Shared::bump(&s.refused, field(text, "code").unwrap_or("unknown"));
                        }
                    }
                }
            }
        };
        live.connected.store(false, Ordering::Relaxed);
        s.unanswered.fetch_add(in_flight, Ordering::Relaxed);
        let code = match end {
            End::Stop => {
                let _ = ws.close(None).await;
                break;
            }
            End::Closed(code) => code,
            End::Error => None,
        };
        Shared::bump(&s.closes, &code.map_or_else(|| "none".to_owned(), |c| c.to_string()));
        live.disconnects.fetch_add(1, Ordering::Relaxed);
        // A sync cut short by the disconnect is asked for again after the next `ready`.
        inbox.syncing = false;
        inbox.publish(&live);
        if up_since.elapsed() >= Duration::from_secs(30) {
            attempt = 0;
        }
        backoff(&mut attempt, code, &mut stop).await;
    }
    Final {
        room_index: spec.room_index,
        baseline: inbox.baseline.unwrap_or(0),
        last_seen: inbox.last_seen,
        held: inbox.held,
    }
}

/// One `message` for this member's room. Returns `Some(after_seq)` when a sync should be asked for.
fn receive(s: &Shared, spec: &Spec, inbox: &mut Inbox, seq: i64, id: Uuid, text: &str) -> Option<i64> {
    if !s.same_id(spec.room_index, seq, id) {
        s.id_conflicts.fetch_add(1, Ordering::Relaxed);
    }
    // A seq below the highest already received on this connection, outside a sync, is the live
    // stream out of order (a sync's replay may legitimately come after live frames above it).
    let out_of_order = seq < inbox.connection_max && !inbox.syncing;
    inbox.connection_max = inbox.connection_max.max(seq);
    if seq <= inbox.last_seen || inbox.held.contains(&seq) {
        s.wire_duplicates.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if out_of_order {
        s.reordered.fetch_add(1, Ordering::Relaxed);
    }
    if inbox.syncing {
        s.delivered_sync.fetch_add(1, Ordering::Relaxed);
    } else {
        s.delivered_live.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(us) = latency_us(text) {
        s.record_latency(us);
    }
    if seq == inbox.last_seen + 1 {
        inbox.last_seen = seq;
        while inbox.held.remove(&(inbox.last_seen + 1)) {
            inbox.last_seen += 1;
        }
        return None;
    }
    inbox.held.insert(seq);
    if inbox.syncing {
        // Live frames above a replay in progress are expected (PROTOCOL §10).
        return None;
    }
    // A gap on the live stream: the server promised every seq after `ready` live. Repair it as a
    // client would, and count it.
    s.live_gaps.fetch_add(1, Ordering::Relaxed);
    inbox.syncing = true;
    Some(inbox.last_seen)
}

/// PROTOCOL.md §10: 0–1 s after a 1012, else full jitter from 0.5 s doubling to 30 s.
async fn backoff(attempt: &mut u32, code: Option<u16>, stop: &mut watch::Receiver<bool>) {
    let delay = if code == Some(1012) {
        Duration::from_secs_f64(rand::random::<f64>())
    } else {
        let cap = (0.5 * 2f64.powi((*attempt).min(10) as i32)).min(30.0);
        *attempt += 1;
        Duration::from_secs_f64(rand::random::<f64>() * cap)
    };
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.changed() => {}
    }
}

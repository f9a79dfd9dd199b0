//! One simulated user: a WebSocket to Chorus (its JSON events at `/api/v1/ws`, or the same events
//! over its Socket.IO endpoint `/socket.io/`) or to the Socket.IO peer (Engine.IO v4 framing by
//! hand, `crate::sio`), sending what the scheduler asks for and accounting for every delivery.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use crate::sio::{self, Packet};
use crate::stats::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    /// Chorus's JSON events at `/api/v1/ws` (`{event, data, ref}`).
    Chorus,
    /// Chorus's Socket.IO endpoint, WebSocket only (`/socket.io/?EIO=4&transport=websocket`): the
    /// same events and data as `chorus`, Socket.IO framing, the token in CONNECT's auth.
    ChorusSocketio,
    /// The Node.js Socket.IO peer (`loadtest/peers/socketio/`): `join_rooms`, then `send` with acks.
    Socketio,
}

/// Chorus over Socket.IO: the ack id of the `sync` after a reconnect (sends count up from 1).
const SYNC_ACK: u64 = 0;

/// Who this connection is and where it goes.
#[derive(Clone)]
pub struct Spec {
    pub protocol: Protocol,
    pub url: String,
    pub token: String,
    pub room: Uuid,
    pub source_ip: Option<IpAddr>,
    pub payload: usize,
    /// Churn: live this long, then reconnect (and `sync`, where the protocol has it).
    pub lifetime: Option<Duration>,
}

pub enum Outgoing {
    Send,
}

pub fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// `t<unix ns>|` then padding up to `size` bytes: receivers read the send time back out.
fn content(size: usize) -> String {
    let mut s = format!("t{}|", unix_nanos());
    while s.len() < size {
        s.push('x');
    }
    s
}

/// The text after `"key":` in a JSON frame, up to the value's end (strings without quotes).
pub fn field<'a>(frame: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":");
    let start = frame.find(&pattern)? + pattern.len();
    let rest = &frame[start..];
    if let Some(stripped) = rest.strip_prefix('"') {
        let end = stripped.find('"')?;
        Some(&stripped[..end])
    } else {
        let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }
}

/// Send time (unix ns) carried in a message's content.
fn sent_at(frame: &str) -> Option<u128> {
    let content = field(frame, "content")?;
    content.strip_prefix('t')?.split('|').next()?.parse().ok()
}

fn latency_us(frame: &str) -> Option<u64> {
    let sent = sent_at(frame)?;
    Some((unix_nanos().saturating_sub(sent) / 1000) as u64)
}

async fn open(spec: &Spec) -> Result<WebSocketStream<TcpStream>, String> {
    let without_scheme = spec.url.strip_prefix("ws://").ok_or("only ws:// URLs are supported")?;
    let host_port = without_scheme.split('/').next().unwrap_or(without_scheme);
    let addr: SocketAddr =
        tokio::net::lookup_host(host_port).await.map_err(|e| e.to_string())?.next().ok_or("no address")?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| e.to_string())?;
    if let Some(ip) = spec.source_ip {
        // Spreading sources over 127.0.0.x lifts the ~28k ephemeral ports per source/destination pair.
        socket.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    // Chorus over Socket.IO takes the token in CONNECT's auth only, as its clients send it.
    let url = if spec.protocol == Protocol::ChorusSocketio {
        spec.url.clone()
    } else {
        let separator = if spec.url.contains('?') { '&' } else { '?' };
        format!("{}{separator}token={}", spec.url, spec.token)
    };
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> Result<String, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Err(_) => return Err("timed out".into()),
            Ok(None) => return Err("closed".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Connects and completes the protocol's handshake; returns the room's head seq if the server said.
/// The room's head seq in a `ready` event's data: its entry in `rooms`, `{"room_id":"…","last_seq":N,…}`.
fn ready_head(ready: &str, room: Uuid) -> Option<i64> {
    ready
        .find(&format!("\"room_id\":\"{room}\""))
        .and_then(|at| field(&ready[at..], "last_seq"))
        .and_then(|v| v.parse().ok())
}

/// At most the first 120 bytes of a frame, for an error message.
fn short(frame: &str) -> &str {
    let mut end = frame.len().min(120);
    while !frame.is_char_boundary(end) {
        end -= 1;
    }
    &frame[..end]
}

/// Engine.IO `open`, then CONNECT with the token: until `40` (or a refusal).
async fn sio_connect(spec: &Spec, ws: &mut WebSocketStream<TcpStream>) -> Result<(), String> {
    let open = next_text(ws).await?;
    if sio::parse(&open) != Packet::Open {
        return Err(format!("expected Engine.IO open, got {}", short(&open)));
    }
    ws.send(Message::text(sio::connect(&spec.token))).await.map_err(|e| e.to_string())?;
    loop {
        let frame = next_text(ws).await?;
        match sio::parse(&frame) {
            Packet::Connected => return Ok(()),
            Packet::ConnectError(why) => return Err(format!("connect refused: {}", short(why))),
            Packet::Closed => return Err(format!("closed while connecting: {}", short(&frame))),
            Packet::Ping => ws.send(Message::text(sio::PONG)).await.map_err(|e| e.to_string())?,
            _ => {}
        }
    }
}

/// Connects and completes the protocol's handshake; returns the room's head seq if the server said.
async fn handshake(spec: &Spec, ws: &mut WebSocketStream<TcpStream>) -> Result<Option<i64>, String> {
    match spec.protocol {
        Protocol::Chorus => {
            let ready = next_text(ws).await?;
            if !ready.starts_with("{\"event\":\"ready\"") {
                return Err(format!("expected ready, got {}", short(&ready)));
            }
            Ok(ready_head(&ready, spec.room))
        }
        Protocol::ChorusSocketio => {
            sio_connect(spec, ws).await?;
            // `40` is followed by `ready` (the hub's events are held until it is out).
            loop {
                let frame = next_text(ws).await?;
                match sio::parse(&frame) {
                    Packet::Event("ready") => return Ok(ready_head(&frame, spec.room)),
                    Packet::Ping => ws.send(Message::text(sio::PONG)).await.map_err(|e| e.to_string())?,
                    Packet::Closed => return Err(format!("closed before ready: {}", short(&frame))),
                    Packet::Event("closing" | "error") => return Err(format!("before ready: {}", short(&frame))),
                    _ => {}
                }
            }
        }
        Protocol::Socketio => {
            sio_connect(spec, ws).await?;
            let join = sio::event(Some(0), "join_rooms", &format!("[\"{}\"]", spec.room));
            ws.send(Message::text(join)).await.map_err(|e| e.to_string())?;
            loop {
                let frame = next_text(ws).await?;
                match sio::parse(&frame) {
                    Packet::Ack(0, _) => return Ok(None),
                    Packet::Ping => ws.send(Message::text(sio::PONG)).await.map_err(|e| e.to_string())?,
                    _ => {}
                }
            }
        }
    }
}

/// Runs one simulated user until `stop` flips: connects (again, under churn), sends on request,
/// checks every message's seq against the last one (a gap is a drop, a repeat a duplicate).
/// Returns the last seq it saw, so the caller can count messages that never arrived at all.
pub async fn run(
    spec: Spec,
    stats: Arc<Stats>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    mut stop: watch::Receiver<bool>,
) -> Option<i64> {
    let c = &stats.counters;
    let mut last_seq: Option<i64> = None;
    let mut missing = std::collections::BTreeSet::new();
    let mut next_ref: u64 = 0;
    let mut first = true;
    while !*stop.borrow() {
        let started = Instant::now();
        let connected = tokio::time::timeout(Duration::from_secs(30), async {
            let mut ws = open(&spec).await?;
            let head = handshake(&spec, &mut ws).await?;
            Ok::<_, String>((ws, head))
        })
        .await
        .unwrap_or_else(|_| Err("connect timed out".into()));
        let (mut ws, head) = match connected {
            Ok(ok) => ok,
            Err(e) => {
                c.connect_failures.fetch_add(1, Ordering::Relaxed);
                if c.connect_failures.load(Ordering::Relaxed) <= 5 {
                    eprintln!("connect failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        stats.record(&stats.connect_time, started.elapsed().as_micros() as u64);
        c.connected.fetch_add(1, Ordering::Relaxed);
        if !first {
            c.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        // Catch up what was missed while away, where the protocol allows it.
        let mut syncing = false;
        match (spec.protocol, last_seq, head) {
            (Protocol::Chorus | Protocol::ChorusSocketio, Some(last), Some(head)) if head > last => {
                let data = format!("{{\"rooms\":[{{\"room_id\":\"{}\",\"after_seq\":{last}}}]}}", spec.room);
                let sync = match spec.protocol {
                    Protocol::ChorusSocketio => sio::event(Some(SYNC_ACK), "sync", &data),
                    _ => format!("{{\"event\":\"sync\",\"data\":{data},\"ref\":\"sync\"}}"),
                };
                syncing = ws.send(Message::text(sync)).await.is_ok();
            }
            (_, None, Some(head)) => last_seq = Some(head),
            _ => {}
        }
        first = false;
        let lifetime = spec.lifetime.map(|l| tokio::time::Instant::now() + l);
        let room = spec.room.to_string();
        let end = loop {
            let until_churn = async {
                match lifetime {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => break "stop",
                _ = until_churn => break "churn",
                out = outgoing.recv() => {
                    let Some(Outgoing::Send) = out else { break "stop" };
                    next_ref += 1;
                    let data = format!("{{\"room_id\":\"{room}\",\"content\":\"{}\"}}", content(spec.payload));
                    let frame = match spec.protocol {
                        Protocol::Chorus => format!("{{\"event\":\"send\",\"data\":{data},\"ref\":\"{next_ref}\"}}"),
                        Protocol::ChorusSocketio | Protocol::Socketio => sio::event(Some(next_ref), "send", &data),
                    };
                    if ws.send(Message::text(frame)).await.is_err() {
                        c.send_errors.fetch_add(1, Ordering::Relaxed);
                        break "error";
                    }
                    c.sent.fetch_add(1, Ordering::Relaxed);
                }
                incoming = ws.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Ping(_))) => { let _ = ws.flush().await; continue; }
                        Some(Ok(Message::Close(_))) | None => break "closed",
                        Some(Ok(_)) => continue,
                        Some(Err(_)) => break "error",
                    };
                    let text = text.as_str();
                    let packet = match spec.protocol {
                        Protocol::Chorus => Packet::Other,
                        Protocol::ChorusSocketio | Protocol::Socketio => sio::parse(text),
                    };
                    let is_message = match spec.protocol {
                        Protocol::Chorus => text.starts_with("{\"event\":\"message\""),
                        Protocol::ChorusSocketio | Protocol::Socketio => packet == Packet::Event("message"),
                    };
                    if is_message {
                        if field(text, "room_id") != Some(room.as_str()) {
                            continue;
                        }
                        let Some(seq) = field(text, "seq").and_then(|s| s.parse::<i64>().ok()) else {
                            c.protocol_errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        match last_seq {
                            // Older than the highest seen: a late arrival filling a gap, or a duplicate.
                            Some(last) if seq <= last => {
                                if missing.remove(&seq) {
                                    c.reordered.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    c.duplicates.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            }
                            Some(last) if seq > last + 1 => {
                                // Not a drop yet: it may still arrive out of order. What is still
                                // missing when the run ends is counted as dropped.
                                if seq - last > 100_000 {
                                    c.drops.fetch_add((seq - last - 1) as u64, Ordering::Relaxed);
                                } else {
                                    missing.extend(last + 1..seq);
                                }
                                last_seq = Some(seq);
                            }
                            _ => last_seq = Some(seq),
                        }
                        if syncing {
                            c.recovered.fetch_add(1, Ordering::Relaxed);
                            c.delivered.fetch_add(1, Ordering::Relaxed);
                        } else if let Some(us) = latency_us(text) {
                            stats.record_delivery(us);
                        }
                        continue;
                    }
                    match (spec.protocol, packet) {
                        (Protocol::Chorus, _) if text.starts_with("{\"event\":\"reply\"") => {
                            if field(text, "ref") == Some("sync") {
                                syncing = false;
                            } else if field(text, "ok") == Some("true") {
                                c.acked.fetch_add(1, Ordering::Relaxed);
                                if let Some(us) = latency_us(text) { stats.record(&stats.ack_latency, us); }
                            } else {
                                c.send_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        (Protocol::Chorus, _) if text.starts_with("{\"event\":\"error\"") => {
                            c.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        // The ack of the sync: its replay came before it, as `message` events.
                        (Protocol::ChorusSocketio, Packet::Ack(SYNC_ACK, _)) => syncing = false,
                        // Chorus's ack carries the same reply data as native, `{ok, result|error}`.
                        (Protocol::ChorusSocketio, Packet::Ack(_, args)) => {
                            if field(args, "ok") == Some("true") {
                                c.acked.fetch_add(1, Ordering::Relaxed);
                                if let Some(us) = latency_us(args) { stats.record(&stats.ack_latency, us); }
                            } else {
                                c.send_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        (Protocol::Socketio, Packet::Ack(_, args)) => {
                            if args.contains("\"error\"") {
                                c.send_errors.fetch_add(1, Ordering::Relaxed);
                            } else {
                                c.acked.fetch_add(1, Ordering::Relaxed);
                                if let Some(us) = latency_us(args) { stats.record(&stats.ack_latency, us); }
                            }
                        }
                        (_, Packet::Ping) => { let _ = ws.send(Message::text(sio::PONG)).await; }
                        (Protocol::ChorusSocketio, Packet::Event("error")) => {
                            c.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        // `closing` comes first, then `41` or the WebSocket's close; `1` is Engine.IO's close.
                        (_, Packet::Closed) => break "closed",
                        _ => {}
                    }
                }
            }
        };
        c.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = ws.close(None).await;
        match end {
            "stop" => break,
            "churn" => {}
            _ => {
                c.disconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    c.drops.fetch_add(missing.len() as u64, Ordering::Relaxed);
    last_seq
}

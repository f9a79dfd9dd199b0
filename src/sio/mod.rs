//! `/socket.io/`: Socket.IO clients (Engine.IO v4, Socket.IO v5) on every node, driving the same
//! session core as `/api/v1/ws`; only the framing differs.
//!
//! - `engine`: one task per Engine.IO session: heartbeat, the Socket.IO packets, the session core;
//! - `pipe`: what the session sends, read by whichever transport is current;
//! - `socket`: the WebSocket transport (a fresh one, or the upgrade of a long-polling session);
//! - this file: the HTTP endpoint (handshake, long-polling `GET`/`POST`) and the node's sessions.
//!
//! A long-polling session's requests must all reach the node that made it: its id starts with the
//! node's id (`<node>.<hex>`), which the bundled nginx routes on (`deploy/nginx`, docs/SOCKETIO.md).

mod engine;
mod pipe;
mod socket;

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytestring::ByteString;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::hub::WorkerId;
use crate::metrics::Metrics;
use crate::protocol::socketio::{self, out, Handshake};
use crate::state::AppState;
use engine::FromClient;
use pipe::{Pipe, Take, Transport};

/// Engine.IO sessions that have no Socket.IO session yet, per node: each holds little, but a
/// client may open them without a token. Past this, handshakes get 503 until some connect or time
/// out (45 s).
const MAX_UNCONNECTED: usize = 10_000;
/// Packets a transport may hand the engine ahead of it (a `POST` body waits for room).
const INBOUND_PACKETS: usize = 16;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/socket.io/").route(web::get().to(get)).route(web::post().to(post)));
}

/// This node's Engine.IO sessions, by id.
pub struct Engines {
    sessions: Mutex<HashMap<Arc<str>, Engine>>,
    metrics: Arc<Metrics>,
    /// The node's id as session ids carry it.
    node: String,
    unconnected: AtomicUsize,
}

#[derive(Clone)]
struct Engine {
    pipe: Arc<Pipe>,
    inbound: mpsc::Sender<FromClient>,
}

impl Engines {
    pub fn new(node_id: &str, metrics: Arc<Metrics>) -> Engines {
        let node = node_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
        Engines { sessions: Mutex::default(), metrics, node, unconnected: AtomicUsize::new(0) }
    }

    fn get(&self, sid: &str) -> Option<Engine> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).get(sid).cloned()
    }

    fn remove(&self, sid: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(sid);
        self.unconnected.fetch_sub(1, Ordering::Relaxed);
        self.metrics.socketio_engines.dec();
    }

    /// A Socket.IO session started (true) or ended (false) on one of the engines.
    fn connected(&self, connected: bool) {
        if connected {
            self.unconnected.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.unconnected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes an engine and starts its task on this worker thread; `None` when the node has too many.
    fn open(
        self: &Arc<Self>,
        state: &web::Data<AppState>,
        worker: WorkerId,
        websocket: bool,
    ) -> Option<(Arc<str>, Engine, String)> {
        if self.unconnected.fetch_add(1, Ordering::Relaxed) >= MAX_UNCONNECTED {
            self.unconnected.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let sid: Arc<str> = format!("{}.{}", self.node, uuid::Uuid::new_v4().simple()).into();
        let settings = &state.settings;
        let interval = settings.ws_heartbeat_s * 1000;
        let open = Handshake {
            sid: &sid,
            upgrades: if websocket { &[] } else { &["websocket"] },
            ping_interval: interval,
            ping_timeout: interval,
            max_payload: settings.max_frame_bytes,
        }
        .packet();
        let pipe = Arc::new(Pipe::new(websocket));
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_PACKETS);
        let engine = Engine { pipe: pipe.clone(), inbound };
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(sid.clone(), engine.clone());
        self.metrics.socketio_engines.inc();
        let task = engine::run(state.clone().into_inner(), self.clone(), sid.clone(), pipe, inbound_rx, worker);
        actix_web::rt::spawn(task);
        Some((sid, engine, open))
    }
}

#[derive(Deserialize)]
struct Query {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

/// Engine.IO's error answers: HTTP 400 with its numbered codes.
fn engine_error(code: u8, message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({ "code": code, "message": message }))
}

fn text(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8")))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body(body)
}

fn unavailable(message: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")))
        .json(serde_json::json!({ "code": "unavailable", "message": message }))
}

/// Reads the query; `Err` is the Engine.IO error for a request v4 cannot serve.
fn query(req: &HttpRequest) -> Result<Query, (u8, &'static str)> {
    let query = web::Query::<Query>::from_query(req.query_string()).map_err(|_| (3, "Bad request"))?.into_inner();
    if query.eio.as_deref() != Some("4") {
        return Err((5, "Unsupported protocol version"));
    }
    match query.transport.as_deref() {
        Some("polling" | "websocket") => Ok(query),
        _ => Err((0, "Transport unknown")),
    }
}

async fn get(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    engines: web::Data<Engines>,
    worker: web::Data<WorkerId>,
) -> HttpResponse {
    let query = match query(&req) {
        Ok(query) => query,
        Err((code, message)) => return engine_error(code, message),
    };
    let engines = engines.into_inner();
    let websocket = query.transport.as_deref() == Some("websocket");
    match query.sid {
        None => {
            if state.draining.load(Ordering::Relaxed) {
                return unavailable("this node is draining");
            }
            if websocket {
                return socket::open(&req, payload, &state, &engines, **worker);
            }
            match engines.open(&state, **worker, false) {
                Some((_, _, open)) => text(StatusCode::OK, open),
                None => unavailable("too many Socket.IO sessions are starting on this node"),
            }
        }
        Some(sid) => {
            let Some(engine) = engines.get(&sid) else { return engine_error(1, "Session ID unknown") };
            if websocket {
                socket::upgrade(&req, payload, &state, engine.pipe, engine.inbound)
            } else {
                poll(&state, &engine.pipe).await
            }
        }
    }
}

/// A long-polling `GET`: waits until there is something to send (a ping at the latest).
async fn poll(state: &AppState, pipe: &Arc<Pipe>) -> HttpResponse {
    if !pipe.begin_poll() {
        return engine_error(3, "Bad request");
    }
    // However this request ends (the client may go away), the next `GET` is welcome.
    struct Polling<'a>(&'a Pipe);
    impl Drop for Polling<'_> {
        fn drop(&mut self) {
            self.0.end_poll();
        }
    }
    let _polling = Polling(pipe);
    // The engine pings within one interval; this bound only guards against a stuck engine.
    let wait = Duration::from_secs(state.settings.ws_heartbeat_s * 2 + 5);
    let take = tokio::time::timeout(wait, poll_fn(|cx| pipe.poll_take(cx, Transport::Polling))).await;
    let body = match take {
        Ok(Take::Packets(packets)) => {
            let mut body = String::with_capacity(packets.iter().map(|p| p.len() + 1).sum());
            for (i, packet) in packets.iter().enumerate() {
                if i > 0 {
                    body.push(socketio::RECORD_SEPARATOR);
                }
                body.push_str(packet);
            }
            body
        }
        Ok(Take::Ended) => out::CLOSE.to_owned(),
        Err(_) => out::NOOP.to_owned(),
    };
    text(StatusCode::OK, body)
}

/// A long-polling `POST`: the client's packets, handed to the engine in order.
async fn post(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<AppState>,
    engines: web::Data<Engines>,
) -> HttpResponse {
    let query = match query(&req) {
        Ok(query) => query,
        Err((code, message)) => return engine_error(code, message),
    };
    let Some(engine) = query.sid.as_deref().and_then(|sid| engines.get(sid)) else {
        return engine_error(1, "Session ID unknown");
    };
    if query.transport.as_deref() != Some("polling") || engine.pipe.is_websocket() {
        return engine_error(3, "Bad request");
    }
    // At most `maxPayload` bytes, read as they come: a larger body closes the session (as the
    // spec says) without being held.
    let max = state.settings.max_frame_bytes;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else { return engine_error(3, "Bad request") };
        if body.len() + chunk.len() > max {
            let _ = engine.inbound.try_send(FromClient::Closed);
            return HttpResponse::PayloadTooLarge()
                .json(serde_json::json!({ "code": "message.too_large", "message": "over maxPayload" }));
        }
        body.extend_from_slice(&chunk);
    }
    let Ok(body) = ByteString::try_from(body.freeze()) else { return engine_error(3, "Bad request") };
    for packet in socketio::split_payload(&body) {
        let packet =
            if packet.starts_with('b') { FromClient::Binary } else { FromClient::Packet(body.slice_ref(packet)) };
        if engine.inbound.send(packet).await.is_err() {
            return engine_error(1, "Session ID unknown");
        }
    }
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static("text/html")))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body("ok")
}

//! The WebSocket transport of an Engine.IO session: one Engine.IO packet per text frame. A fresh
//! WebSocket (`transport=websocket`, no `sid`) carries the session from its `open` packet on; one
//! with a `sid` is a long-polling session's upgrade: it answers `2probe` with `3probe`, and takes
//! over once the client sends `5`.
//!
//! Frames are read with `ws::wire`'s reader (bounded by `CHORUS_MAX_FRAME_BYTES` on the header)
//! by a small task on the connection's worker thread, which hands packets to the engine; the
//! response body writes what the [`Pipe`] gives it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::Encoder;
use actix_http::body::{BodyStream, MessageBody};
use actix_http::ws::{CloseReason, Codec, Message};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::Stream;
use tokio::sync::mpsc;

use super::engine::FromClient;
use super::pipe::{Pipe, Take, Transport};
use super::{engine_error, unavailable, Engines};
use crate::hub::WorkerId;
use crate::state::AppState;
use crate::ws::wire::{Inbound, Incoming};

/// How long a probing WebSocket may take to finish the upgrade (Engine.IO's `upgradeTimeout`).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// A new Engine.IO session on a WebSocket.
pub(super) fn open(
    req: &HttpRequest,
    payload: web::Payload,
    state: &web::Data<AppState>,
    engines: &Arc<Engines>,
    worker: WorkerId,
) -> HttpResponse {
    let response = match actix_http::ws::handshake(req.head()) {
        Ok(response) => response,
        Err(_) => return engine_error(3, "Bad request"),
    };
    let Some((_, engine, open)) = engines.open(state, worker, true) else {
        return unavailable("too many Socket.IO sessions are starting on this node");
    };
    engine.pipe.push(open);
    let inbound = Inbound::new(payload.into_inner(), state.settings.max_frame_bytes);
    actix_web::rt::spawn(read(inbound, engine.pipe.clone(), engine.inbound, false));
    respond(response, SocketBody::new(engine.pipe, true))
}

/// The upgrade of a long-polling session.
pub(super) fn upgrade(
    req: &HttpRequest,
    payload: web::Payload,
    state: &web::Data<AppState>,
    pipe: Arc<Pipe>,
    to_engine: mpsc::Sender<FromClient>,
) -> HttpResponse {
    if !pipe.begin_probe() {
        return engine_error(3, "Bad request");
    }
    let response = match actix_http::ws::handshake(req.head()) {
        Ok(response) => response,
        Err(_) => {
            pipe.probe_failed();
            return engine_error(3, "Bad request");
        }
    };
    let inbound = Inbound::new(payload.into_inner(), state.settings.max_frame_bytes);
    actix_web::rt::spawn(read(inbound, pipe.clone(), to_engine, true));
    respond(response, SocketBody::new(pipe, false))
}

fn respond(mut response: actix_http::ResponseBuilder, body: SocketBody) -> HttpResponse {
    match response.message_body(BodyStream::new(body).boxed()) {
        Ok(response) => response.into(),
        Err(_) => engine_error(3, "Bad request"),
    }
}

/// Reads the client's frames: the probe exchange first when upgrading, then every frame to the
/// engine, waiting for room (the engine reads the next packet once its replies are out).
async fn read(mut inbound: Inbound, pipe: Arc<Pipe>, to_engine: mpsc::Sender<FromClient>, probing: bool) {
    if probing {
        let upgraded = tokio::time::timeout(UPGRADE_TIMEOUT, probe(&mut inbound, &pipe)).await;
        if upgraded != Ok(true) {
            pipe.probe_failed();
            return;
        }
    }
    loop {
        let packet = match inbound.recv().await {
            Some(Ok(Incoming::Text(text))) => FromClient::Packet(text),
            Some(Ok(Incoming::Binary)) => FromClient::Binary,
            Some(Ok(Incoming::Ping(bytes))) => {
                pipe.ws_pong(bytes);
                continue;
            }
            Some(Ok(Incoming::Pong)) => continue,
            Some(Ok(Incoming::Close(_)) | Err(_)) | None => FromClient::Closed,
        };
        let closed = matches!(packet, FromClient::Closed);
        if to_engine.send(packet).await.is_err() || closed {
            return;
        }
    }
}

/// `2probe` → `3probe`, then `5`: true once the WebSocket is the session's transport.
async fn probe(inbound: &mut Inbound, pipe: &Pipe) -> bool {
    let mut probed = false;
    while let Some(Ok(message)) = inbound.recv().await {
        match message {
            Incoming::Text(text) if &*text == "2probe" && !probed => {
                probed = true;
                pipe.probe();
            }
            Incoming::Text(text) if &*text == "5" && probed => {
                pipe.upgrade();
                return true;
            }
            Incoming::Ping(bytes) => pipe.ws_pong(bytes),
            Incoming::Pong => {}
            _ => return false,
        }
    }
    false
}

/// The response body: packets from the pipe as text frames, then a close frame.
struct SocketBody {
    pipe: Arc<Pipe>,
    /// Whether this WebSocket carries the session (from the start, or since `5`).
    active: bool,
    codec: Codec,
    buf: BytesMut,
    done: bool,
}

impl SocketBody {
    fn new(pipe: Arc<Pipe>, active: bool) -> Self {
        SocketBody { pipe, active, codec: Codec::new(), buf: BytesMut::new(), done: false }
    }

    fn encode(&mut self, message: Message) {
        if let Err(error) = self.codec.encode(message, &mut self.buf) {
            tracing::debug!(%error, "websocket frame not encoded");
        }
    }

    fn close(&mut self, code: u16) {
        self.encode(Message::Close(Some(CloseReason { code: code.into(), description: None })));
        self.done = true;
    }
}

impl Stream for SocketBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(bytes) = this.pipe.take_ws_pong() {
            this.encode(Message::Pong(bytes));
        }
        if !this.active {
            match this.pipe.poll_probe(cx) {
                Poll::Ready(Some(reply)) => this.encode(Message::Text(reply)),
                Poll::Ready(None) if this.pipe.is_websocket() => this.active = true,
                Poll::Ready(None) => this.close(1000),
                Poll::Pending => {}
            }
        }
        if this.active && !this.done {
            match this.pipe.poll_take(cx, Transport::Websocket) {
                Poll::Ready(Take::Packets(packets)) => {
                    for packet in packets {
                        this.encode(Message::Text(packet));
                    }
                }
                Poll::Ready(Take::Ended) => {
                    let code = this.pipe.close_code();
                    this.close(if code == 0 { 1000 } else { code });
                }
                Poll::Pending => {}
            }
        }
        if !this.buf.is_empty() {
            return Poll::Ready(Some(Ok(std::mem::take(&mut this.buf).freeze())));
        }
        if this.done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl Drop for SocketBody {
    fn drop(&mut self) {
        if self.active {
            self.pipe.websocket_gone();
        } else {
            self.pipe.probe_failed();
        }
    }
}

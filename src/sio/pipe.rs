//! What an Engine.IO session has to send, and which transport takes it. The session writes its own
//! packets here (replies, acks, `ready`, pings); the hub's queue for the session sits here too and
//! is read by whatever transport is current: a long-polling `GET` (on any worker thread), or the
//! WebSocket connection's response body. Neither the hub nor the session waits on the client.
//!
//! Order: the session's packets first, then the hub's queue, which is *held* until `ready` is out
//! and while a `sync` decides what the client already has (as on `/api/v1/ws`, see `ws::wire`).

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use actix_web::web::Bytes;
use bytestring::ByteString;
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::ApiError;
use crate::hub::Outbound;
use crate::protocol::socketio::out;
use crate::protocol::ws::{ErrorEvent, ReplyData, ServerEvent};
use crate::session::Outbox;
use crate::ws::wire::{register, wake};

/// Most packets one long-polling response or one turn of the WebSocket body takes from the hub's
/// queue; the rest wait for the next one.
const QUEUE_BATCH: usize = 64;
/// About the most bytes one long-polling response carries (one packet may take it past this).
const POLL_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    Websocket,
}

#[derive(Default)]
struct Shared {
    /// The session's own packets, written before anything from the hub's queue.
    replies: VecDeque<ByteString>,
    /// The hub's queue for the Socket.IO session, while one is connected.
    queue: Option<mpsc::Receiver<Outbound>>,
    /// Per room, the highest seq this client has been sent: live packets at or below it are dropped.
    delivered: HashMap<Uuid, i64>,
    held: bool,
    /// The WebSocket took over from long-polling (or the session started on a WebSocket).
    websocket: bool,
    /// A WebSocket is probing (`2probe` answered): a waiting `GET` is answered at once (`6` if
    /// nothing else) so the client can finish the upgrade.
    probing: bool,
    /// A WebSocket is attached for an upgrade (one at a time).
    prober_attached: bool,
    /// `3probe`, for the probing WebSocket only.
    probe_reply: Option<ByteString>,
    /// A WebSocket ping's payload to answer (RFC 6455 §5.5.2), on whichever WebSocket got it.
    ws_pong: Option<Bytes>,
    /// A long-polling `GET` is waiting.
    polling: bool,
    /// The engine ended: transports write what is left (then `close`) and finish.
    ended: bool,
    /// The close code for a WebSocket's close frame.
    close_code: u16,
    /// The current transport is gone (the WebSocket dropped, or two `GET`s overlapped).
    gone: bool,
    /// The end was written: long-polling's `1` packet, or the WebSocket's close frame.
    close_sent: bool,
    /// The current transport's reader: a waiting `GET`, or the active WebSocket body.
    consumer: Option<Waker>,
    /// The probing WebSocket's body.
    prober: Option<Waker>,
    /// The engine's task, waiting for `flushed` or `gone`.
    session: Option<Waker>,
}

/// What one read of the pipe gives a transport.
pub enum Take {
    Packets(Vec<ByteString>),
    /// The engine ended and everything is out.
    Ended,
}

#[derive(Default)]
pub struct Pipe {
    shared: Mutex<Shared>,
}

impl Pipe {
    pub fn new(websocket: bool) -> Pipe {
        Pipe { shared: Mutex::new(Shared { websocket, held: true, ..Shared::default() }) }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, packet: impl Into<ByteString>) {
        let mut shared = self.lock();
        shared.replies.push_back(packet.into());
        wake(&mut shared.consumer);
    }

    pub fn is_websocket(&self) -> bool {
        self.lock().websocket
    }

    /// Starts carrying a connected Socket.IO session's queue (held until `ready`).
    pub fn attach_queue(&self, queue: mpsc::Receiver<Outbound>) {
        let mut shared = self.lock();
        shared.queue = Some(queue);
        shared.delivered.clear();
        shared.held = true;
    }

    /// The Socket.IO session ended: what the hub queued for it is dropped.
    pub fn detach_queue(&self) {
        let mut shared = self.lock();
        shared.queue = None;
        shared.delivered.clear();
    }

    pub fn hold(&self) {
        self.lock().held = true;
    }

    pub fn release(&self) {
        let mut shared = self.lock();
        if shared.held {
            shared.held = false;
            wake(&mut shared.consumer);
        }
    }

    /// The engine is over: transports send what is left, then `close`, and finish.
    pub fn end(&self, close_code: u16) {
        let mut shared = self.lock();
        shared.ended = true;
        shared.close_code = close_code;
        wake(&mut shared.consumer);
        wake(&mut shared.prober);
    }

    pub fn close_code(&self) -> u16 {
        self.lock().close_code
    }

    fn flushed_or_gone(shared: &Shared) -> bool {
        shared.replies.is_empty() || shared.gone
    }

    pub fn is_flushed(&self) -> bool {
        Pipe::flushed_or_gone(&self.lock())
    }

    /// Resolves once the session's packets were all taken by a transport (or it is gone).
    pub async fn flushed(&self) {
        poll_fn(|cx| {
            let mut shared = self.lock();
            if Pipe::flushed_or_gone(&shared) {
                Poll::Ready(())
            } else {
                register(&mut shared.session, cx);
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves once the end was written (after every packet before it), or the transport is gone.
    pub async fn close_sent(&self) {
        poll_fn(|cx| {
            let mut shared = self.lock();
            if shared.close_sent || shared.gone {
                Poll::Ready(())
            } else {
                register(&mut shared.session, cx);
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves when the current transport is gone.
    pub async fn gone(&self) {
        poll_fn(|cx| {
            let mut shared = self.lock();
            if shared.gone {
                Poll::Ready(())
            } else {
                register(&mut shared.session, cx);
                Poll::Pending
            }
        })
        .await
    }

    fn set_gone(shared: &mut Shared) {
        shared.gone = true;
        wake(&mut shared.session);
        wake(&mut shared.consumer);
    }

    /// A long-polling `GET` starts; false if one is already waiting (the engine then closes: the
    /// spec's answer to overlapping requests) or the session moved to a WebSocket.
    pub fn begin_poll(&self) -> bool {
        let mut shared = self.lock();
        if shared.websocket {
            return false;
        }
        if shared.polling {
            Pipe::set_gone(&mut shared);
            return false;
        }
        shared.polling = true;
        true
    }

    pub fn end_poll(&self) {
        self.lock().polling = false;
    }

    /// What the current transport sends next: the session's packets, then the hub's (unless held).
    /// `None` from a waiting `GET`'s point of view means "wait". `bytes` bounds a polling response.
    pub fn poll_take(&self, cx: &mut Context<'_>, transport: Transport) -> Poll<Take> {
        let mut shared = self.lock();
        let shared = &mut *shared;
        let mut packets = Vec::new();
        let mut bytes = 0;
        while let Some(packet) = shared.replies.pop_front() {
            bytes += packet.len();
            packets.push(packet);
            if transport == Transport::Polling && bytes >= POLL_BYTES {
                break;
            }
        }
        if shared.replies.is_empty() {
            wake(&mut shared.session);
        }
        if !shared.held && !shared.ended && (transport == Transport::Websocket || bytes < POLL_BYTES) {
            if let Some(queue) = shared.queue.as_mut() {
                let mut taken = 0;
                while taken < QUEUE_BATCH {
                    let Poll::Ready(Some(item)) = queue.poll_recv(cx) else { break };
                    taken += 1;
                    if let Some((room, seq)) = item.stream {
                        let delivered = shared.delivered.entry(room).or_insert(0);
                        if seq <= *delivered {
                            continue;
                        }
                        *delivered = seq;
                    }
                    let packet = item.socketio_packet().clone();
                    bytes += packet.len();
                    packets.push(packet);
                    if transport == Transport::Polling && bytes >= POLL_BYTES {
                        break;
                    }
                }
                if taken == QUEUE_BATCH && transport == Transport::Websocket {
                    // More may be waiting and nothing else will wake the body for them.
                    cx.waker().wake_by_ref();
                }
            }
        }
        if !packets.is_empty() {
            return Poll::Ready(Take::Packets(packets));
        }
        if shared.ended || shared.gone {
            // On its own, after the last packets: socket.io-client handles an Engine.IO close at
            // once and the Socket.IO packets of the same payload a tick later, on a closed socket.
            shared.close_sent = true;
            wake(&mut shared.session);
            return Poll::Ready(Take::Ended);
        }
        if transport == Transport::Polling && shared.probing {
            return Poll::Ready(Take::Packets(vec![ByteString::from_static(out::NOOP)]));
        }
        register(&mut shared.consumer, cx);
        Poll::Pending
    }

    /// The probing WebSocket's side: `3probe` once it is due, or whether the engine ended.
    pub fn poll_probe(&self, cx: &Context<'_>) -> Poll<Option<ByteString>> {
        let mut shared = self.lock();
        if let Some(reply) = shared.probe_reply.take() {
            return Poll::Ready(Some(reply));
        }
        if shared.ended || shared.websocket {
            return Poll::Ready(None);
        }
        register(&mut shared.prober, cx);
        Poll::Pending
    }

    /// A WebSocket comes to upgrade this session; false if it cannot (already upgraded, or
    /// another is probing).
    pub fn begin_probe(&self) -> bool {
        let mut shared = self.lock();
        if shared.websocket || shared.prober_attached || shared.ended {
            return false;
        }
        shared.prober_attached = true;
        true
    }

    pub fn ws_pong(&self, payload: Bytes) {
        let mut shared = self.lock();
        shared.ws_pong = Some(payload);
        wake(&mut shared.consumer);
        wake(&mut shared.prober);
    }

    pub fn take_ws_pong(&self) -> Option<Bytes> {
        self.lock().ws_pong.take()
    }

    /// `2probe` arrived on a WebSocket: answer it there, and let a waiting `GET` go.
    pub fn probe(&self) {
        let mut shared = self.lock();
        shared.probing = true;
        shared.probe_reply = Some(ByteString::from_static(out::PONG_PROBE));
        wake(&mut shared.prober);
        wake(&mut shared.consumer);
    }

    /// `5` arrived: the WebSocket is the transport from now on.
    pub fn upgrade(&self) {
        let mut shared = self.lock();
        shared.websocket = true;
        shared.probing = false;
        // A `GET` still waiting is answered (with `6`, or what is there) and none is taken again.
        wake(&mut shared.consumer);
        wake(&mut shared.prober);
    }

    /// The active WebSocket's body is gone.
    pub fn websocket_gone(&self) {
        Pipe::set_gone(&mut self.lock());
    }

    /// A probe that did not finish: long-polling goes on as before.
    pub fn probe_failed(&self) {
        let mut shared = self.lock();
        if !shared.websocket {
            shared.probing = false;
            shared.probe_reply = None;
            shared.prober_attached = false;
        }
    }
}

/// The per-room stream positions, under the pipe's lock. Never hold this across an `.await`.
pub struct Positions<'a>(MutexGuard<'a, Shared>);

impl Deref for Positions<'_> {
    type Target = HashMap<Uuid, i64>;
    fn deref(&self) -> &Self::Target {
        &self.0.delivered
    }
}

impl DerefMut for Positions<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0.delivered
    }
}

/// The session core's writes, as Socket.IO packets.
impl Outbox for Pipe {
    fn event(&self, event: &ServerEvent) -> usize {
        let frame = event.to_frame();
        let len = frame.len();
        self.push(crate::protocol::socketio::event_from_frame(&frame));
        len
    }

    fn answer(&self, reference: Option<String>, result: Result<Value, &ApiError>) {
        let ack = reference.and_then(|r| r.parse::<u64>().ok());
        match (ack, result) {
            (Some(id), result) => {
                let body = match result {
                    Ok(value) => ReplyData { ok: true, result: Some(value), error: None },
                    Err(error) => ReplyData { ok: false, result: None, error: Some(ErrorEvent::from(error)) },
                };
                self.push(out::ack(id, &serde_json::to_string(&body).unwrap_or_default()));
            }
            (None, Ok(_)) => {}
            (None, Err(error)) => {
                self.push(crate::protocol::socketio::event_from_frame(&ServerEvent::Error(error.into()).to_frame()));
            }
        }
    }

    fn hold(&self) {
        Pipe::hold(self);
    }

    fn release(&self) {
        Pipe::release(self);
    }

    fn delivered(&self) -> impl DerefMut<Target = HashMap<Uuid, i64>> {
        Positions(self.lock())
    }

    fn flushed(&self) -> impl Future<Output = ()> {
        Pipe::flushed(self)
    }
}

//! The WebSocket connection itself: frames in from the HTTP request's payload, frames out as the
//! HTTP response's body. There is no writer task and no channel of its own per socket: the response
//! body reads the socket's hub queue directly, so a delivery wakes the connection's own task and
//! nothing else, and the session's replies reach the body through state both share (both run on the
//! same worker thread).
//!
//! Measured against actix-ws, which puts a 32-slot channel and a forwarding step between the session
//! and the body: ~3 KiB less per idle socket and one task wake-up fewer per delivery
//! (docs/BENCHMARKS.md). The framing itself is actix-http's `ws::Codec`, as actix-ws uses.
//!
//! Order on the wire: the session's frames (replies, `ready`, `sync` replays, pings, pongs) first,
//! then the hub's queue. The queue is *held* until `ready` is out, and while a command runs that must
//! not interleave with live frames (`sync`): it decides, under the hold, which live frames the client
//! already has.

use std::cell::{RefCell, RefMut};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{CloseReason, Codec, Frame, Item, Message, ProtocolError};
use actix_web::web::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::hub::Outbound;

/// Most queued frames encoded per poll of the body: the rest wait for the next one, so one busy
/// socket cannot grow its write buffer without bound.
const QUEUE_BATCH: usize = 64;

/// What the session and the response body share.
#[derive(Default)]
struct Shared {
    /// The session's own frames, written before anything from the hub's queue.
    replies: VecDeque<Message>,
    /// Per room, the highest seq this socket has been sent (or told to fetch itself): live frames
    /// at or below it are dropped, so a `sync` replay and the live stream never duplicate each other.
    delivered: HashMap<Uuid, i64>,
    /// While set, the body leaves the hub's queue alone.
    held: bool,
    /// A close frame to write (after the replies), after which the body ends.
    close: Option<CloseReason>,
    /// The session is gone: end the body after the replies.
    ended: bool,
    /// The connection is gone (the body was dropped): the session should end.
    gone: bool,
    body: Option<Waker>,
    session: Option<Waker>,
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// The session's side: what it writes, and the per-room stream positions.
pub struct Outgoing {
    shared: Rc<RefCell<Shared>>,
}

impl Outgoing {
    fn push(&self, message: Message) {
        let mut shared = self.shared.borrow_mut();
        shared.replies.push_back(message);
        wake(&mut shared.body);
    }

    pub fn text(&self, frame: ByteString) {
        self.push(Message::Text(frame));
    }

    pub fn ping(&self) {
        self.push(Message::Ping(Bytes::new()));
    }

    pub fn pong(&self, payload: Bytes) {
        self.push(Message::Pong(payload));
    }

    /// Writes a close frame after what the session already wrote; the hub's queue is abandoned.
    pub fn close(&self, code: u16, description: &str) {
        let mut shared = self.shared.borrow_mut();
        shared.close = Some(CloseReason { code: code.into(), description: Some(description.to_owned()) });
        wake(&mut shared.body);
    }

    /// Stops taking frames from the hub's queue until [`Outgoing::release`].
    pub fn hold(&self) {
        self.shared.borrow_mut().held = true;
    }

    pub fn release(&self) {
        let mut shared = self.shared.borrow_mut();
        if shared.held {
            shared.held = false;
            wake(&mut shared.body);
        }
    }

    /// The per-room stream positions. Never hold this across an `.await`.
    pub fn delivered(&self) -> RefMut<'_, HashMap<Uuid, i64>> {
        RefMut::map(self.shared.borrow_mut(), |s| &mut s.delivered)
    }

    /// Resolves once the session's frames are all handed to the connection (or it is gone): the
    /// session reads the client's next frame only then, so a client that sends without reading
    /// cannot pile up replies.
    pub async fn flushed(&self) {
        poll_fn(|cx| {
            let mut shared = self.shared.borrow_mut();
            if shared.replies.is_empty() || shared.gone {
                Poll::Ready(())
            } else {
                register(&mut shared.session, cx);
                Poll::Pending
            }
        })
        .await
    }

    pub fn is_flushed(&self) -> bool {
        let shared = self.shared.borrow();
        shared.replies.is_empty() || shared.gone
    }

    /// Resolves when the connection is gone (the client disconnected or the server dropped it).
    pub async fn gone(&self) {
        poll_fn(|cx| {
            let mut shared = self.shared.borrow_mut();
            if shared.gone {
                Poll::Ready(())
            } else {
                register(&mut shared.session, cx);
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let mut shared = self.shared.borrow_mut();
        shared.ended = true;
        wake(&mut shared.body);
    }
}

/// The response body: the session's frames, then the hub's queue, encoded as WebSocket frames.
pub struct SocketBody {
    shared: Rc<RefCell<Shared>>,
    queue: mpsc::Receiver<Outbound>,
    codec: Codec,
    buf: BytesMut,
    done: bool,
}

/// Appends one frame to the body's output. Encoding a server frame only fails for a close reason or
/// a control payload over 125 bytes, which this module never writes; such a frame is dropped rather
/// than the connection.
fn encode(codec: &mut Codec, buf: &mut BytesMut, message: Message) {
    if let Err(error) = codec.encode(message, buf) {
        tracing::debug!(%error, "websocket frame not encoded");
    }
}

impl Stream for SocketBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let SocketBody { shared, queue, codec, buf, done } = self.get_mut();
        if *done {
            return Poll::Ready(None);
        }
        let mut shared = shared.borrow_mut();
        if !shared.replies.is_empty() {
            while let Some(message) = shared.replies.pop_front() {
                encode(codec, buf, message);
            }
            wake(&mut shared.session);
        }
        if let Some(reason) = shared.close.take() {
            encode(codec, buf, Message::Close(Some(reason)));
            *done = true;
        } else if shared.ended {
            *done = true;
        } else if !shared.held {
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
                encode(codec, buf, Message::Text(item.frame.clone()));
            }
            if taken == QUEUE_BATCH {
                // More may be waiting and nothing else will wake us for them.
                cx.waker().wake_by_ref();
            }
        }
        if !*done {
            register(&mut shared.body, cx);
        }
        if !buf.is_empty() {
            // Taken whole, not split: a split-off buffer keeps its allocation's unused tail alive
            // (~370 bytes per idle socket, measured), and most sockets write rarely.
            return Poll::Ready(Some(Ok(std::mem::take(buf).freeze())));
        }
        if *done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl Drop for SocketBody {
    fn drop(&mut self) {
        let mut shared = self.shared.borrow_mut();
        shared.gone = true;
        wake(&mut shared.session);
    }
}

/// The two ends of a new socket: the session's [`Outgoing`] and the [`SocketBody`] to answer the
/// upgrade with. The queue starts held (see the module comment).
pub fn pair(queue: mpsc::Receiver<Outbound>) -> (Outgoing, SocketBody) {
    let shared = Rc::new(RefCell::new(Shared { held: true, ..Shared::default() }));
    let body = SocketBody { shared: shared.clone(), queue, codec: Codec::new(), buf: BytesMut::new(), done: false };
    (Outgoing { shared }, body)
}

/// A complete message from the client (continuations already put together).
pub enum Incoming {
    Text(ByteString),
    Binary,
    Ping(Bytes),
    Pong,
    Close,
}

/// Frames from the client, read from the upgraded request's payload.
pub struct Inbound {
    payload: actix_http::Payload,
    buf: BytesMut,
    codec: Codec,
    /// A fragmented message being put together: whether it is text, and its parts so far.
    partial: Option<(bool, BytesMut)>,
    max_message: usize,
    ended: bool,
}

impl Inbound {
    /// `max_message` bounds one frame and one whole fragmented message (beyond it: `Overflow`).
    pub fn new(payload: actix_http::Payload, max_message: usize) -> Self {
        Inbound {
            payload,
            buf: BytesMut::new(),
            codec: Codec::new().max_size(max_message),
            partial: None,
            max_message,
            ended: false,
        }
    }

    pub async fn recv(&mut self) -> Option<Result<Incoming, ProtocolError>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, ProtocolError>>> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => match self.assemble(frame) {
                    Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                    Ok(None) => continue,
                    Err(e) => return self.fail(e),
                },
                Ok(None) => {}
                Err(e) => return self.fail(e),
            }
            if self.buf.is_empty() {
                // Let go of the connection's read buffer, which an empty slice of it keeps alive.
                self.buf = BytesMut::new();
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => self.buf.extend_from_slice(&bytes),
                Poll::Ready(Some(Err(e))) => return self.fail(ProtocolError::Io(std::io::Error::other(e))),
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn fail(&mut self, error: ProtocolError) -> Poll<Option<Result<Incoming, ProtocolError>>> {
        self.ended = true;
        self.buf = BytesMut::new();
        Poll::Ready(Some(Err(error)))
    }

    fn assemble(&mut self, frame: Frame) -> Result<Option<Incoming>, ProtocolError> {
        Ok(Some(match frame {
            Frame::Text(bytes) => Incoming::Text(text(bytes)?),
            Frame::Binary(_) => Incoming::Binary,
            Frame::Ping(bytes) => Incoming::Ping(bytes),
            Frame::Pong(_) => Incoming::Pong,
            Frame::Close(_) => Incoming::Close,
            Frame::Continuation(item) => {
                let (first, part, last) = match item {
                    Item::FirstText(part) => (Some(true), part, false),
                    Item::FirstBinary(part) => (Some(false), part, false),
                    Item::Continue(part) => (None, part, false),
                    Item::Last(part) => (None, part, true),
                };
                match (first, self.partial.as_mut()) {
                    (Some(is_text), None) => self.partial = Some((is_text, BytesMut::from(&part[..]))),
                    (None, Some((_, parts))) => parts.extend_from_slice(&part),
                    (Some(_), Some(_)) => return Err(ProtocolError::ContinuationStarted),
                    (None, None) => return Err(ProtocolError::ContinuationNotStarted),
                }
                if self.partial.as_ref().is_some_and(|(_, parts)| parts.len() > self.max_message) {
                    return Err(ProtocolError::Overflow);
                }
                if !last {
                    return Ok(None);
                }
                match self.partial.take() {
                    Some((true, parts)) => Incoming::Text(text(parts.freeze())?),
                    _ => Incoming::Binary,
                }
            }
        }))
    }
}

/// A text frame's payload, which must be UTF-8 (else 1007, as `InvalidData`).
fn text(bytes: Bytes) -> Result<ByteString, ProtocolError> {
    ByteString::try_from(bytes).map_err(|e| ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

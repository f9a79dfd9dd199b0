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
    close: Option<Message>,
    /// The session is gone: end the body after the replies.
    ended: bool,
    /// The connection is gone (the body was dropped): the session should end.
    gone: bool,
    body: Option<Waker>,
    session: Option<Waker>,
}

pub(crate) fn wake(slot: &mut Option<Waker>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

pub(crate) fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
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
        self.set_close(Some(CloseReason { code: code.into(), description: Some(description.to_owned()) }));
    }

    /// Answers the client's close (RFC 6455 §5.5.1) with its own status code, or with an empty
    /// close if it sent none; like [`Outgoing::close`] otherwise.
    pub fn close_echo(&self, code: Option<u16>) {
        self.set_close(code.map(|code| CloseReason { code: code.into(), description: None }));
    }

    fn set_close(&self, reason: Option<CloseReason>) {
        let mut shared = self.shared.borrow_mut();
        shared.close = Some(Message::Close(reason));
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
        if let Some(close) = shared.close.take() {
            encode(codec, buf, close);
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
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(ByteString),
    Binary,
    Ping(Bytes),
    Pong,
    /// The client's close, with its status code if it sent one. The codec has already refused a
    /// close whose code no endpoint may send (1005, 1006, 1015, reserved ranges) or whose reason is
    /// not UTF-8 (`ProtocolError::BadOpCode`).
    Close(Option<u16>),
}

/// The longest frame header a client can send: 2 bytes, a 64-bit length, a 4-byte mask.
#[cfg(test)]
const MAX_FRAME_HEADER: usize = 14;

/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes.
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Decodes and reassembles client frames from bytes it is fed; no I/O, so tests can drive it.
///
/// What it holds is bounded by `max_message`: a frame whose *header* declares more than that, or
/// a fragment that would grow its message past it, fails with `Overflow` as soon as the header is
/// in, before any of its payload is kept. actix-http's codec alone does not do this: it checks
/// `max_size` only once the whole frame is buffered (`Parser::parse`), so a header declaring 1 GiB
/// would have the connection buffer whatever the client sends. Once `next_message` has returned
/// `None`, the bytes it holds are fewer than `max_message + MAX_FRAME_HEADER + 125` (one
/// incomplete frame, and a fragmented message that frame may be a control frame inside of).
pub struct FrameReader {
    buf: BytesMut,
    codec: Codec,
    /// A fragmented message being put together: whether it is text, and its parts so far.
    partial: Option<(bool, BytesMut)>,
    max_message: usize,
    failed: bool,
}

impl FrameReader {
    /// `max_message` bounds one frame's payload and one whole fragmented message.
    pub fn new(max_message: usize) -> Self {
        FrameReader {
            buf: BytesMut::new(),
            codec: Codec::new().max_size(max_message),
            partial: None,
            max_message,
            failed: false,
        }
    }

    /// Adds bytes from the connection. Ignored once the reader has failed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes held: input not yet decoded, and the parts of a fragmented message.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.buf.len() + self.partial.as_ref().map_or(0, |(_, parts)| parts.len())
    }

    /// The next complete message, an error (after which the reader yields nothing more), or `None`
    /// when it needs more bytes.
    pub fn next_message(&mut self) -> Option<Result<Incoming, ProtocolError>> {
        if self.failed {
            return None;
        }
        loop {
            if let Err(e) = self.check_header() {
                return Some(self.fail(e));
            }
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => match self.assemble(frame) {
                    Ok(Some(message)) => return Some(Ok(message)),
                    Ok(None) => continue,
                    Err(e) => return Some(self.fail(e)),
                },
                Ok(None) => {
                    if self.buf.is_empty() {
                        // Let go of the allocation the last frame came from, which an empty
                        // remainder of it keeps alive.
                        self.buf = BytesMut::new();
                    }
                    return None;
                }
                Err(e) => return Some(self.fail(e)),
            }
        }
    }

    fn fail(&mut self, error: ProtocolError) -> Result<Incoming, ProtocolError> {
        self.failed = true;
        self.buf = BytesMut::new();
        self.partial = None;
        Err(error)
    }

    /// Refuses the next frame on its header alone if its payload could not be kept.
    fn check_header(&self) -> Result<(), ProtocolError> {
        let Some(length) = declared_length(&self.buf) else { return Ok(()) };
        let opcode = self.buf[0] & 0x0F;
        if opcode & 0x08 != 0 && length > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::InvalidLength(usize::try_from(length).unwrap_or(usize::MAX)));
        }
        // A data frame while a fragmented message is open counts on top of it: a continuation adds
        // to it, and a new text or binary frame there is an error the codec finds only once the
        // frame is whole. Control frames (checked above) are small.
        let held = match (opcode, &self.partial) {
            (0..=2, Some((_, parts))) => parts.len() as u64,
            _ => 0,
        };
        if length.saturating_add(held) > self.max_message as u64 {
            return Err(ProtocolError::Overflow);
        }
        Ok(())
    }

    fn assemble(&mut self, frame: Frame) -> Result<Option<Incoming>, ProtocolError> {
        Ok(Some(match frame {
            Frame::Text(bytes) => Incoming::Text(text(bytes)?),
            Frame::Binary(_) => Incoming::Binary,
            Frame::Ping(bytes) => Incoming::Ping(bytes),
            Frame::Pong(_) => Incoming::Pong,
            Frame::Close(reason) => Incoming::Close(reason.map(|r| r.code.into())),
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
                // Unreachable after `check_header`; kept so the bound does not rest on it alone.
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

/// The payload length a frame header declares, once the bytes that carry it are in (RFC 6455 §5.2).
fn declared_length(buf: &[u8]) -> Option<u64> {
    let second = *buf.get(1)?;
    match second & 0x7F {
        126 => buf.get(2..4).map(|b| u64::from(u16::from_be_bytes([b[0], b[1]]))),
        127 => buf.get(2..10).map(|b| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        short => Some(u64::from(short)),
    }
}

/// Frames from the client, read from the upgraded request's payload.
pub struct Inbound {
    payload: actix_http::Payload,
    reader: FrameReader,
    ended: bool,
}

impl Inbound {
    /// `max_message` bounds one frame and one whole fragmented message (beyond it: `Overflow`).
    pub fn new(payload: actix_http::Payload, max_message: usize) -> Self {
        Inbound { payload, reader: FrameReader::new(max_message), ended: false }
    }

    pub async fn recv(&mut self) -> Option<Result<Incoming, ProtocolError>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, ProtocolError>>> {
        loop {
            if let Some(result) = self.reader.next_message() {
                self.ended |= result.is_err();
                return Poll::Ready(Some(result));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            // Read only when what is buffered holds no whole message: the buffer stays within one
            // frame (bounded by the reader) plus one chunk of the connection's reads.
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => self.reader.feed(&bytes),
                Poll::Ready(Some(Err(e))) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(std::io::Error::other(e)))));
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A text frame's payload, which must be UTF-8 (else 1007, as `InvalidData`).
fn text(bytes: Bytes) -> Result<ByteString, ProtocolError> {
    ByteString::try_from(bytes).map_err(|e| ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One client frame as bytes, with whatever header fields the test chooses.
    struct RawFrame {
        fin: bool,
        rsv: u8,
        opcode: u8,
        mask: Option<[u8; 4]>,
        /// 0: 7-bit length, 1: 16-bit, 2: 64-bit (a length that does not fit the 7-bit field
        /// always uses a wider one).
        width: u8,
        /// A length to declare instead of the payload's own.
        declared: Option<u64>,
        payload: Vec<u8>,
    }

    impl RawFrame {
        fn client(fin: bool, opcode: u8, payload: &[u8]) -> RawFrame {
            RawFrame {
                fin,
                rsv: 0,
                opcode,
                mask: Some([0x37, 0xfa, 0x21, 0x3d]),
                width: 0,
                declared: None,
                payload: payload.to_vec(),
            }
        }

        fn bytes(&self) -> Vec<u8> {
            let mut out = vec![(u8::from(self.fin) << 7) | ((self.rsv & 7) << 4) | (self.opcode & 0x0F)];
            let masked = if self.mask.is_some() { 0x80 } else { 0 };
            let length = self.declared.unwrap_or(self.payload.len() as u64);
            if self.width == 2 || length > u64::from(u16::MAX) {
                out.push(masked | 127);
                out.extend_from_slice(&length.to_be_bytes());
            } else if self.width == 1 || length > 125 {
                out.push(masked | 126);
                out.extend_from_slice(&(length as u16).to_be_bytes());
            } else {
                out.push(masked | length as u8);
            }
            match self.mask {
                Some(key) => {
                    out.extend_from_slice(&key);
                    out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
                }
                None => out.extend_from_slice(&self.payload),
            }
            out
        }
    }

    /// Feeds `input` in chunks of the given sizes (cycled), reading every message out after each
    /// chunk as `Inbound` does, and checks the reader's bounds all along. Returns what came out.
    fn run(max_message: usize, input: &[u8], chunks: &[usize]) -> Vec<Result<Incoming, String>> {
        let mut reader = FrameReader::new(max_message);
        let mut out = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.iter().copied().cycle();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(sizes.next().unwrap_or(1).clamp(1, rest.len()));
            rest = tail;
            reader.feed(chunk);
            while let Some(result) = reader.next_message() {
                let failed = result.is_err();
                out.push(result.map_err(|e| e.to_string()));
                if failed {
                    assert!(reader.next_message().is_none(), "nothing after an error");
                    assert_eq!(reader.buffered(), 0, "an error lets go of the buffer");
                }
            }
            assert!(
                reader.buffered() < max_message + MAX_FRAME_HEADER + MAX_CONTROL_PAYLOAD as usize,
                "{} bytes held with max_message {max_message}",
                reader.buffered()
            );
            if let Some((_, parts)) = &reader.partial {
                assert!(parts.len() <= max_message);
            }
        }
        for message in out.iter().flatten() {
            if let Incoming::Text(text) = message {
                assert!(text.len() <= max_message);
            }
        }
        out
    }

    /// A message a well-behaved client sends, and what the reader should make of it.
    #[derive(Debug, Clone)]
    enum Sent {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>),
        /// A text message in fragments (split at the given byte offsets, at least one), with a
        /// ping after the first fragment.
        Fragmented(String, Vec<usize>),
    }

    impl Sent {
        fn frames(&self) -> Vec<RawFrame> {
            match self {
                Sent::Text(text) => vec![RawFrame::client(true, 1, text.as_bytes())],
                Sent::Binary(bytes) => vec![RawFrame::client(true, 2, bytes)],
                Sent::Ping(bytes) => vec![RawFrame::client(true, 9, bytes)],
                Sent::Pong(bytes) => vec![RawFrame::client(true, 10, bytes)],
                Sent::Close(code) => {
                    let payload = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                    vec![RawFrame::client(true, 8, &payload)]
                }
                Sent::Fragmented(text, cuts) => {
                    let bytes = text.as_bytes();
                    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
                    cuts.sort_unstable();
                    let mut bounds = vec![0];
                    bounds.extend(cuts);
                    bounds.push(bytes.len());
                    let last = bounds.len() - 2;
                    let mut frames = Vec::new();
                    for (i, pair) in bounds.windows(2).enumerate() {
                        let opcode = if i == 0 { 1 } else { 0 };
                        frames.push(RawFrame::client(i == last, opcode, &bytes[pair[0]..pair[1]]));
                        if i == 0 && last > 0 {
                            frames.push(RawFrame::client(true, 9, b"mid"));
                        }
                    }
                    frames
                }
            }
        }

        fn expected(&self) -> Vec<Incoming> {
            match self {
                Sent::Text(text) => vec![Incoming::Text(text.as_str().into())],
                Sent::Binary(_) => vec![Incoming::Binary],
                Sent::Ping(bytes) => vec![Incoming::Ping(Bytes::from(bytes.clone()))],
                Sent::Pong(_) => vec![Incoming::Pong],
                Sent::Close(code) => vec![Incoming::Close(*code)],
                // At least one cut, so at least two fragments and the ping between them.
                Sent::Fragmented(text, _) => {
                    vec![Incoming::Ping(Bytes::from_static(b"mid")), Incoming::Text(text.as_str().into())]
                }
            }
        }
    }

    fn sent() -> impl Strategy<Value = Sent> {
        let control = proptest::collection::vec(any::<u8>(), 0..=125);
        let close_code = prop_oneof![Just(1000u16), Just(1001), 1007u16..=1014, 3000u16..=4999];
        prop_oneof![
            ".{0,300}".prop_map(Sent::Text),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Sent::Binary),
            control.clone().prop_map(Sent::Ping),
            control.prop_map(Sent::Pong),
            proptest::option::of(close_code).prop_map(Sent::Close),
            (".{0,300}", proptest::collection::vec(any::<usize>(), 1..5)).prop_map(|(t, c)| Sent::Fragmented(t, c)),
        ]
    }

    /// Any header a hostile client can write, biased towards ones the codec gets past (masked, no
    /// reserved bits), so that lengths, opcodes and fragment order are what gets exercised.
    fn hostile_frame() -> impl Strategy<Value = Vec<u8>> {
        let frame = (
            any::<bool>(),
            prop_oneof![9 => Just(0u8), 1 => 0u8..8],
            prop_oneof![4 => 0u8..3, 2 => 8u8..11, 1 => 0u8..16],
            prop_oneof![9 => any::<[u8; 4]>().prop_map(Some), 1 => Just(None)],
            0u8..3,
            prop_oneof![
                8 => Just(None),
                1 => (0u64..2048).prop_map(Some),
                1 => any::<u64>().prop_map(Some),
            ],
            proptest::collection::vec(any::<u8>(), 0..400),
        )
            .prop_map(|(fin, rsv, opcode, mask, width, declared, payload)| {
                RawFrame { fin, rsv, opcode, mask, width, declared, payload }.bytes()
            });
        prop_oneof![9 => frame, 1 => proptest::collection::vec(any::<u8>(), 0..32)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

        /// Arbitrary bytes, shaped like frames or not, however they are split: no panic, and the
        /// reader never holds more than one frame's worth past `max_message` (see `run`).
        #[test]
        fn hostile_bytes_never_panic_and_stay_bounded(
            max_message in 0usize..1024,
            frames in proptest::collection::vec(hostile_frame(), 0..12),
            chunks in proptest::collection::vec(1usize..600, 1..8),
        ) {
            run(max_message, &frames.concat(), &chunks);
        }

        /// What a well-behaved client sends comes out message for message, however the bytes
        /// arrive.
        #[test]
        fn well_formed_frames_decode_the_same_however_they_are_chunked(
            messages in proptest::collection::vec(sent(), 0..8),
            chunks in proptest::collection::vec(1usize..400, 1..8),
        ) {
            let input: Vec<u8> = messages.iter().flat_map(Sent::frames).flat_map(|f| f.bytes()).collect();
            let expected: Vec<Result<Incoming, String>> = messages.iter().flat_map(Sent::expected).map(Ok).collect();
            // Every text here is at most 300 chars of up to 4 bytes each.
            prop_assert_eq!(run(1200, &input, &chunks), expected);
        }
    }

    /// The cap holds on the header: the payload of an oversized frame is never waited for.
    #[test]
    fn an_oversized_frame_fails_on_its_header() {
        for declared in [65, 1 << 20, u64::MAX >> 1, u64::MAX] {
            let mut frame = RawFrame::client(true, 1, b"");
            frame.declared = Some(declared);
            let mut reader = FrameReader::new(64);
            reader.feed(&frame.bytes());
            assert!(
                matches!(reader.next_message(), Some(Err(ProtocolError::Overflow))),
                "a header declaring {declared} bytes"
            );
        }
        // A fragment that would take its message past the cap fails on its header too.
        let mut reader = FrameReader::new(64);
        reader.feed(&RawFrame::client(false, 1, &[b'x'; 40]).bytes());
        assert!(reader.next_message().is_none());
        let mut second = RawFrame::client(true, 0, b"");
        second.declared = Some(25);
        reader.feed(&second.bytes());
        assert!(matches!(reader.next_message(), Some(Err(ProtocolError::Overflow))));
        // A frame exactly at the cap is fine.
        let mut reader = FrameReader::new(64);
        reader.feed(&RawFrame::client(true, 1, &[b'x'; 64]).bytes());
        assert!(matches!(reader.next_message(), Some(Ok(Incoming::Text(t))) if t.len() == 64));
    }

    #[test]
    fn a_control_frame_over_125_bytes_fails_on_its_header() {
        let mut frame = RawFrame::client(true, 9, b"");
        frame.declared = Some(126);
        let mut reader = FrameReader::new(1024);
        reader.feed(&frame.bytes());
        assert!(matches!(reader.next_message(), Some(Err(ProtocolError::InvalidLength(126)))));
    }

    #[test]
    fn a_close_carries_its_code_and_a_forbidden_code_is_a_protocol_error() {
        let mut reader = FrameReader::new(64);
        reader.feed(&RawFrame::client(true, 8, &4321u16.to_be_bytes()).bytes());
        assert_eq!(reader.next_message().and_then(Result::ok), Some(Incoming::Close(Some(4321))));
        for code in [1005u16, 1006, 1015, 999, 1004, 2000, 5000] {
            let mut reader = FrameReader::new(64);
            reader.feed(&RawFrame::client(true, 8, &code.to_be_bytes()).bytes());
            assert!(matches!(reader.next_message(), Some(Err(_))), "close code {code}");
        }
    }
}

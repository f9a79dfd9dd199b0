//! Upgrade requests (`Connection: upgrade`), served off actix-http's HTTP/1 dispatcher.
//!
//! The dispatcher keeps a read and a write buffer of 8 KiB per connection for the connection's
//! whole life; a WebSocket that has carried a frame each way holds a resident page of each, which
//! was more than half of what an idle socket cost (docs/bench/profile.md). actix-http hands an
//! upgrade request to an upgrade service together with the connection, before routing: this module
//! is that service. It runs the request through the same actix-web `App` as any other request (the
//! same routes, extractors, middleware and error bodies), and then, instead of the dispatcher:
//!
//! - the request's payload reads the socket directly, a chunk at a time, with no buffer kept
//!   between reads (the session's frame reader keeps what a frame still needs);
//! - the response's head is written with actix-http's own HTTP/1 encoder, then the body's chunks
//!   are written as they come, each dropped once the kernel has it.
//!
//! A response other than `101 Switching Protocols` (a bad token, a draining node, an unknown path)
//! is written whole and the connection closed, as `Connection: close` tells the client. Either way
//! the connection ends with a FIN and a short wait for the client's, as the dispatcher ends one.
//!
//! A client that stops reading cannot hold a connection forever: a write that the socket takes no
//! byte of for `write_stall` drops the connection with a reset. The session has its own limits for
//! a client that does not read (4008 when its queue overflows, 4000 after 2.5 heartbeats without a
//! word from it); this one covers what comes after them, when the session is over and only its
//! close frame, stuck behind a full socket, kept the connection (its socket buffers and a file
//! descriptor) open.

use std::io;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_codec::{Encoder, Framed, FramedParts};
use actix_http::body::{BoxBody, MessageBody};
use actix_http::error::PayloadError;
use actix_http::{h1, ConnectionType, Payload, Request, Response, StatusCode};
use actix_web::dev::{Service, ServiceResponse};
use actix_web::web::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most read from the socket at once, into a buffer on the stack. A client's frames are small;
/// a larger message arrives over several reads.
const READ_CHUNK: usize = 8 * 1024;

/// How long a closed connection waits for the client to close its side (actix-web's
/// `client_disconnect_timeout`, as the server had it before this module).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Serves one upgrade request on `framed`'s connection with `app`, for as long as the connection
/// lives when it is upgraded; a write that makes no progress for `write_stall` ends it. Never
/// fails: a connection that breaks is the client's business, and actix-http would log an error from
/// here as the server's.
pub async fn serve<S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    write_stall: Duration,
) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    if let Err(error) = connection(app, req, framed, write_stall).await {
        tracing::debug!(%error, "upgraded connection ended");
    }
    Ok(())
}

async fn connection<S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    write_stall: Duration,
) -> io::Result<()>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let FramedParts { io, mut codec, read_buf, write_buf, .. } = framed.into_parts();
    // What the client sent after the request's head (its first frames, if it did not wait for the
    // 101) is the payload's first chunk; the dispatcher's buffers are let go here.
    let early = (!read_buf.is_empty()).then(|| Bytes::copy_from_slice(&read_buf));
    drop((read_buf, write_buf));
    let io = Rc::new(Writer { io, stall: write_stall });
    let socket = SocketRead { io: Rc::downgrade(&io), early, ended: false };
    let payload: actix_http::BoxedPayloadStream = Box::pin(socket);
    let (req, _) = req.replace_payload(Payload::Stream { payload });

    let response: Response<BoxBody> = match app.call(req).await {
        Ok(response) => Response::from(response).map_into_boxed_body(),
        Err(error) => Response::from(error),
    };
    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let (mut head, body) = response.into_parts();
    if !upgraded {
        head.head_mut().set_connection_type(ConnectionType::Close);
    }
    let mut out = BytesMut::new();
    codec.encode(h1::Message::Item((head, body.size())), &mut out)?;
    if upgraded {
        drop(codec);
        io.write_all(&out).await?;
        drop(out);
        // The body ends when the session does; a write that fails drops it, which tells the
        // session the connection is gone.
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
            let chunk = chunk.map_err(|e| io::Error::other(e.to_string()))?;
            io.write_all(&chunk).await?;
        }
    } else {
        let bytes = actix_http::body::to_bytes(body).await.map_err(|e| io::Error::other(e.to_string()))?;
        codec.encode(h1::Message::Chunk(Some(bytes)), &mut out)?;
        codec.encode(h1::Message::Chunk(None), &mut out)?;
        io.write_all(&out).await?;
    }
    // The payload (held by a session that may outlive this future by a moment) holds only a `Weak`
    // and, from here on, reads the end of the stream.
    match Rc::try_unwrap(io) {
        Ok(writer) => close(writer.io).await,
        Err(_) => Ok(()),
    }
}

/// Ends the connection the way actix-http's dispatcher does: FIN first, then what the client still
/// sends is read and dropped until it closes its side, for at most `CLOSE_LINGER`. Closing a socket
/// with unread bytes in it (a client's close frame, the rest of a refused request) sends a reset,
/// which can make the client drop the close frame or error body it has not read yet.
async fn close(mut io: TcpStream) -> io::Result<()> {
    io.shutdown().await?;
    let drain = async {
        let mut sink = [0u8; 1024];
        while io.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
    Ok(())
}

/// The connection's socket, and how long a write may wait for room in it.
struct Writer {
    io: TcpStream,
    stall: Duration,
}

impl Writer {
    /// Writes all of `bytes` as the socket takes them. If it takes none for `stall`, the connection
    /// is reset: the socket is told to discard what it still holds (`SO_LINGER` 0), so that neither
    /// the descriptor nor the unsent bytes outlive the connection.
    async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.io.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                // Only a full socket starts the clock: the usual write (the socket has room) reads
                // no time and sets no timer.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if tokio::time::timeout(self.stall, self.io.writable()).await.is_err() {
                        let _ = self.io.set_zero_linger();
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The request's payload: what the socket delivers, read when the handler asks for it (so a client
/// that sends faster than its session reads is held back by TCP, not by a buffer here).
struct SocketRead {
    io: Weak<Writer>,
    early: Option<Bytes>,
    ended: bool,
}

impl Stream for SocketRead {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(early) = this.early.take() {
            return Poll::Ready(Some(Ok(early)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let Some(writer) = this.io.upgrade() else {
            this.ended = true;
            return Poll::Ready(None);
        };
        let io = &writer.io;
        loop {
            if let Err(error) = ready!(io.poll_read_ready(cx)) {
                this.ended = true;
                return Poll::Ready(Some(Err(PayloadError::Io(error))));
            }
            let mut chunk = [0u8; READ_CHUNK];
            match io.try_read(&mut chunk) {
                Ok(0) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Ok(n) => return Poll::Ready(Some(Ok(Bytes::copy_from_slice(&chunk[..n])))),
                // Readiness was stale: poll again, which registers for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(PayloadError::Io(error))));
                }
            }
        }
    }
}

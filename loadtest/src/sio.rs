//! Engine.IO v4 / Socket.IO v5 framing over a WebSocket, by hand: one Engine.IO packet per text
//! frame, the Socket.IO packets inside its `4` (message) packets. Only what the generator needs:
//! the `open` packet, CONNECT, EVENT with or without an ack id, ACK, CONNECT_ERROR, DISCONNECT and
//! the Engine.IO heartbeat. Used for the Node.js peer and for Chorus's own `/socket.io/`.

/// Engine.IO `pong`: the answer to the server's `2`.
pub const PONG: &str = "3";

/// CONNECT to the namespace `/` with `{"token": …}` as the auth payload.
pub fn connect(token: &str) -> String {
    format!("40{{\"token\":\"{token}\"}}")
}

/// EVENT `name` with one argument (`data`, JSON), asking for an ack when `ack` is given.
pub fn event(ack: Option<u64>, name: &str, data: &str) -> String {
    match ack {
        Some(id) => format!("42{id}[\"{name}\",{data}]"),
        None => format!("42[\"{name}\",{data}]"),
    }
}

/// One text frame from the server, as far as the generator reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Engine.IO `open` (`0{…}`).
    Open,
    /// Engine.IO `ping` (`2`): answer with [`PONG`].
    Ping,
    /// Engine.IO `close` (`1`) or Socket.IO DISCONNECT of `/` (`41`): the session is over.
    Closed,
    /// Socket.IO CONNECT answered (`40{"sid":…}`).
    Connected,
    /// Socket.IO CONNECT_ERROR (`44{…}`), its payload.
    ConnectError(&'a str),
    /// Socket.IO EVENT (`42["name",…]`): its name and the whole frame (fields are read from it).
    Event(&'a str),
    /// Socket.IO ACK (`43<id>[…]`): the id and the arguments.
    Ack(u64, &'a str),
    /// Anything else (pong, noop, other namespaces, binary packets).
    Other,
}

pub fn parse(frame: &str) -> Packet<'_> {
    match frame.as_bytes() {
        [b'0', ..] => Packet::Open,
        [b'1', ..] => Packet::Closed,
        [b'2', ..] => Packet::Ping,
        [b'4', b'0', ..] => Packet::Connected,
        [b'4', b'1', ..] => Packet::Closed,
        [b'4', b'4', ..] => Packet::ConnectError(&frame[2..]),
        [b'4', b'2', b'[', b'"', ..] => {
            let name = &frame[4..];
            match name.find('"') {
                Some(end) => Packet::Event(&name[..end]),
                None => Packet::Other,
            }
        }
        [b'4', b'3', ..] => {
            let rest = &frame[2..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            match rest[..digits].parse() {
                Ok(id) => Packet::Ack(id, &rest[digits..]),
                Err(_) => Packet::Other,
            }
        }
        _ => Packet::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_connect_and_events() {
        assert_eq!(connect("a.b.c"), r#"40{"token":"a.b.c"}"#);
        assert_eq!(event(Some(7), "send", r#"{"room_id":"r"}"#), r#"427["send",{"room_id":"r"}]"#);
        assert_eq!(event(Some(0), "sync", "{}"), r#"420["sync",{}]"#);
        assert_eq!(event(None, "typing", "{}"), r#"42["typing",{}]"#);
    }

    #[test]
    fn reads_engine_packets() {
        assert_eq!(parse(r#"0{"sid":"n.1","pingInterval":25000}"#), Packet::Open);
        assert_eq!(parse("2"), Packet::Ping);
        assert_eq!(parse("1"), Packet::Closed);
        assert_eq!(parse("6"), Packet::Other);
        assert_eq!(parse(""), Packet::Other);
    }

    #[test]
    fn reads_socket_packets() {
        assert_eq!(parse(r#"40{"sid":"0190-…"}"#), Packet::Connected);
        assert_eq!(parse("41"), Packet::Closed);
        assert_eq!(
            parse(r#"44{"message":"unauthenticated","data":{"code":"unauthenticated"}}"#),
            Packet::ConnectError(r#"{"message":"unauthenticated","data":{"code":"unauthenticated"}}"#)
        );
        assert_eq!(parse(r#"42["message",{"room_id":"r","seq":3}]"#), Packet::Event("message"));
        assert_eq!(parse(r#"42["ready",{"rooms":[]}]"#), Packet::Event("ready"));
        assert_eq!(parse(r#"42["closing",{"code":4001}]"#), Packet::Event("closing"));
        assert_eq!(parse(r#"430[{"ok":true}]"#), Packet::Ack(0, r#"[{"ok":true}]"#));
        assert_eq!(parse(r#"4312[{"ok":false,"error":{}}]"#), Packet::Ack(12, r#"[{"ok":false,"error":{}}]"#));
        // No id, or a namespace other than `/`: not ours.
        assert_eq!(parse(r#"43[{"ok":true}]"#), Packet::Other);
        assert_eq!(parse(r#"42/admin,["x",1]"#), Packet::Other);
        assert_eq!(parse(r#"42["unterminated"#), Packet::Other);
    }
}

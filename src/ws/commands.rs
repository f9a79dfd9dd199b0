//! What each client event does. Every command goes through the same `service` functions as REST,
//! so rules and fan-out are identical whichever way a client talks.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use serde_json::{json, Value};

use super::session::Connection;
use crate::error::{ApiError, Missing};
use crate::protocol::ws::{ClientEvent, Empty, ServerEvent, SyncRoom};
use crate::service::{accounts, messages, rooms};

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

/// Runs one command. Frames it produces (a `pong`) go into `frames` ahead of the reply (a `sync`
/// writes its replay to the socket itself, in chunks); the returned value is the reply's `result`.
pub async fn run(conn: &mut Connection, event: ClientEvent, frames: &mut Vec<ByteString>) -> Result<Value, ApiError> {
    let state = conn.state.clone();
    let me = conn.user.id;
    match event {
        ClientEvent::Ping(_) => {
            frames.push(ServerEvent::Pong(Empty {}).to_frame().into());
            Ok(json!({}))
        }
        ClientEvent::Send(send) => {
            let sent = messages::send(&state, me, send.room_id, &send.content, send.client_msg_id.as_deref()).await?;
            to_value(&sent.message)
        }
        // These name only the message: a room the caller cannot see must not be told apart from a
        // message that does not exist.
        ClientEvent::Edit(edit) => {
            let room = messages::room_of(&state, edit.message_id).await?;
            to_value(&messages::edit(&state, me, room, edit.message_id, &edit.content).await.map_err(hide_room)?)
        }
        ClientEvent::Delete(delete) => {
            let room = messages::room_of(&state, delete.message_id).await?;
            to_value(&messages::delete(&state, me, room, delete.message_id).await.map_err(hide_room)?)
        }
        ClientEvent::Typing(typing) => {
            if !state.hub.is_attached(conn.session_id, typing.room_id) {
                return Err(ApiError::NotFound(Missing::Room));
            }
            let throttle = Duration::from_millis(state.settings.typing_throttle_ms);
            let now = Instant::now();
            let recent = conn.typing_at.get(&typing.room_id).is_some_and(|at| now.duration_since(*at) < throttle);
            if !recent {
                conn.typing_at.insert(typing.room_id, now);
                state.fanout.typing(typing.room_id, me, &conn.user.username).await;
            }
            Ok(json!({"forwarded": !recent}))
        }
        ClientEvent::Ack(ack) => {
            to_value(&messages::receipts(&state, me, ack.room_id, ack.delivered_seq, ack.read_seq).await?)
        }
        ClientEvent::Sync(sync) => Box::pin(sync_rooms(conn, sync.rooms)).await,
        ClientEvent::History(history) => {
            to_value(&messages::history(&state, me, history.room_id, history.before_seq, None, history.limit).await?)
        }
        ClientEvent::Join(join) => {
            let (room, _) = rooms::join(&state, me, join.room_id, join.password).await?;
            // Attach this socket now so the reply is never ahead of the stream; the member_joined
            // event attaches the user's other sockets on every node.
            let effective = state.hub.attach(conn.session_id, &[(room.id, room.last_seq)]).await;
            // A removal or ban that committed after the join announced itself before this socket
            // was attached: look again now that it is, and let go if so.
            if !rooms::is_member(&state, me, room.id).await? {
                state.hub.detach(conn.session_id, room.id);
                return Err(ApiError::NotFound(Missing::Room));
            }
            for (room_id, last) in effective {
                conn.out.delivered().entry(room_id).or_insert(last);
            }
            to_value(&room)
        }
        ClientEvent::Leave(leave) => {
            rooms::leave(&state, me, leave.room_id).await?;
            state.hub.detach(conn.session_id, leave.room_id);
            Ok(json!({}))
        }
        ClientEvent::Presence(query) => {
            if query.user_ids.len() > 200 {
                return Err(ApiError::field("user_ids", "at most 200 users per query"));
            }
            to_value(&accounts::presence_of(&state, &query.user_ids).await?)
        }
        ClientEvent::Auth(auth) => {
            let fresh = accounts::authenticate(&state, &auth.token)?;
            if fresh.id != me {
                return Err(ApiError::field("token", "belongs to another user"));
            }
            conn.user.expires_at = fresh.expires_at;
            conn.user.generation = fresh.generation;
            conn.control.set_token_generation(fresh.generation);
            let expires_at = chrono::DateTime::from_timestamp(fresh.expires_at as i64, 0);
            Ok(json!({ "expires_at": expires_at }))
        }
    }
}

/// Messages per read while replaying a room: what a `sync` holds in memory at once.
const REPLAY_CHUNK: i64 = 100;

/// `sync`: replays each named room after the client's position. Bounded per frame whatever the
/// frame says: a room named twice is replayed once, each room gives at most `CHORUS_WS_SYNC_LIMIT`
/// messages, and the whole frame at most `CHORUS_SYNC_MAX_MESSAGES` messages and
/// `CHORUS_SYNC_MAX_BYTES` bytes. Rooms cut short (or not reached) say `has_more`, and the client
/// syncs again from `last_seq`. Messages are written in chunks, each once the previous one has been
/// handed to the connection, so a replay never sits in memory whole.
async fn sync_rooms(conn: &mut Connection, rooms: Vec<SyncRoom>) -> Result<Value, ApiError> {
    if rooms.len() > 500 {
        return Err(ApiError::field("rooms", "at most 500 rooms per sync"));
    }
    let state = conn.state.clone();
    let settings = &state.settings;
    let mut messages_left = settings.sync_max_messages;
    let mut bytes_left = settings.sync_max_bytes;
    let mut seen = HashSet::with_capacity(rooms.len());
    // No live frame goes out while the replay is read: the positions set below decide which of them
    // the client already has (the session releases the hold once the reply is queued).
    conn.out.hold();
    let mut rooms_out = Vec::with_capacity(rooms.len());
    for room in rooms {
        if !seen.insert(room.room_id) {
            continue;
        }
        let mut last = room.after_seq.max(0);
        if messages_left == 0 || bytes_left == 0 {
            rooms_out.push(json!({"room_id": room.room_id, "last_seq": last, "has_more": true}));
            continue;
        }
        let replay = messages::Replay::open(&state, conn.user.id, room.room_id).await?;
        let mut room_left = settings.ws_sync_limit;
        let has_more = loop {
            let want = REPLAY_CHUNK.min(room_left).min(messages_left);
            if want == 0 {
                // Out of budget: one more read says whether anything is left.
                break replay.next(&state, last, 0).await?.1;
            }
            let (chunk, more) = replay.next(&state, last, want).await?;
            let mut cut = false;
            for message in chunk {
                let frame = ServerEvent::Message(message.clone()).to_frame();
                // The first message always goes out, so a sync makes progress whatever the budget.
                if frame.len() > bytes_left && messages_left < settings.sync_max_messages {
                    bytes_left = 0;
                    cut = true;
                    break;
                }
                bytes_left = bytes_left.saturating_sub(frame.len());
                messages_left -= 1;
                room_left -= 1;
                last = message.seq;
                conn.out.text(frame.into());
            }
            conn.out.flushed().await;
            if cut {
                break true;
            }
            if !more {
                break false;
            }
        };
        let mut positions = conn.out.delivered();
        let delivered = positions.entry(room.room_id).or_insert(0);
        *delivered = (*delivered).max(last);
        drop(positions);
        rooms_out.push(json!({"room_id": room.room_id, "last_seq": last, "has_more": has_more}));
    }
    Ok(json!({"rooms": rooms_out}))
}

fn hide_room(e: ApiError) -> ApiError {
    match e {
        ApiError::NotFound(Missing::Room) => ApiError::NotFound(Missing::Message),
        other => other,
    }
}

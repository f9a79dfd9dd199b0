//! What each client event does, whatever the transport. Every command goes through the same
//! `service` functions as REST, so rules and fan-out are identical whichever way a client talks.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Outbox, Session};
use crate::error::{ApiError, Missing};
use crate::protocol::ws::{ClientEvent, Empty, ServerEvent, SyncRoom};
use crate::service::{accounts, messages, rooms};

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

/// Runs one command. Events it produces (a `pong`, a `sync` replay) are written ahead of the
/// answer; the returned value is the answer's `result`.
pub(super) async fn run(session: &mut Session, out: &impl Outbox, event: ClientEvent) -> Result<Value, ApiError> {
    let state = session.state.clone();
    let me = session.user.id;
    match event {
        ClientEvent::Ping(_) => {
            out.event(&ServerEvent::Pong(Empty {}));
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
            if !state.hub.is_attached(session.id, typing.room_id) {
                return Err(ApiError::NotFound(Missing::Room));
            }
            let throttle = Duration::from_millis(state.settings.typing_throttle_ms);
            let now = Instant::now();
            let recent = session.typing_at.get(&typing.room_id).is_some_and(|at| now.duration_since(*at) < throttle);
            if !recent {
                session.typing_at.insert(typing.room_id, now);
                state.fanout.typing(typing.room_id, me, &session.user.username).await;
            }
            Ok(json!({"forwarded": !recent}))
        }
        ClientEvent::Ack(ack) => {
            to_value(&messages::receipts(&state, me, ack.room_id, ack.delivered_seq, ack.read_seq).await?)
        }
        ClientEvent::Sync(sync) => Box::pin(sync_rooms(session, out, sync.rooms)).await,
        ClientEvent::History(history) => {
            to_value(&messages::history(&state, me, history.room_id, history.before_seq, None, history.limit).await?)
        }
        ClientEvent::Join(join) => {
            let (room, _) = rooms::join(&state, me, join.room_id, join.password).await?;
            // Attach this session now so the answer is never ahead of the stream; the member_joined
            // event attaches the user's other sessions on every node.
            let effective = state.hub.attach(session.id, &[(room.id, room.last_seq)]).await;
            // A removal or ban that committed after the join announced itself before this session
            // was attached: look again now that it is, and let go if so.
            if !rooms::is_member(&state, me, room.id).await? {
                state.hub.detach(session.id, room.id);
                return Err(ApiError::NotFound(Missing::Room));
            }
            for (room_id, last) in effective {
                out.delivered().entry(room_id).or_insert(last);
            }
            to_value(&room)
        }
        ClientEvent::Leave(leave) => {
            rooms::leave(&state, me, leave.room_id).await?;
            state.hub.detach(session.id, leave.room_id);
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
            session.user.expires_at = fresh.expires_at;
            session.user.generation = fresh.generation;
            session.control.set_token_generation(fresh.generation);
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
/// `CHORUS_SYNC_MAX_BYTES` bytes (the message that reaches it is the last). Rooms cut short (or not
/// reached) say `has_more`, and the client syncs again from `last_seq`. Messages are written in
/// chunks, each once the previous one has been handed to the connection, so a replay never sits in
/// memory whole, and no pooled connection is held while the client reads.
async fn sync_rooms(session: &Session, out: &impl Outbox, rooms: Vec<SyncRoom>) -> Result<Value, ApiError> {
    if rooms.len() > 500 {
        return Err(ApiError::field("rooms", "at most 500 rooms per sync"));
    }
    let state = session.state.clone();
    let settings = &state.settings;
    let mut messages_left = settings.sync_max_messages;
    let mut bytes_left = settings.sync_max_bytes;
    let mut seen = HashSet::with_capacity(rooms.len());
    // No live frame goes out while the replay is read: the positions set below decide which of them
    // the client already has (the session releases the hold once the reply is queued).
    out.hold();
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
        let replay = messages::Replay::open(&state, session.user.id, room.room_id).await?;
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
                if bytes_left == 0 {
                    cut = true;
                    break;
                }
                let seq = message.seq;
                let written = out.event(&ServerEvent::Message(message));
                bytes_left = bytes_left.saturating_sub(written);
                messages_left -= 1;
                room_left -= 1;
                last = seq;
            }
            out.flushed().await;
            if cut {
                break true;
            }
            if !more {
                break false;
            }
        };
        let mut positions = out.delivered();
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

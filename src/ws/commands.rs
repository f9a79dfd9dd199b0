//! What each client event does. Every command goes through the same `service` functions as REST,
//! so rules and fan-out are identical whichever way a client talks.

use std::time::{Duration, Instant};

use bytestring::ByteString;
use serde_json::{json, Value};

use super::session::Connection;
use crate::error::{ApiError, Missing};
use crate::protocol::ws::{ClientEvent, Empty, Presence, ServerEvent};
use crate::service::{messages, rooms};
use crate::{db, presence};

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

/// Runs one command. Frames it produces (a `pong`, a `sync` replay) go into `frames` ahead of the
/// reply; the returned value is the reply's `result`.
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
        ClientEvent::Sync(sync) => {
            if sync.rooms.len() > 500 {
                return Err(ApiError::field("rooms", "at most 500 rooms per sync"));
            }
            // No live frame goes out while the replay is read: the positions set below decide which
            // of them the client already has (the session releases the hold once the replay is queued).
            conn.out.hold();
            let mut rooms_out = Vec::with_capacity(sync.rooms.len());
            for room in sync.rooms {
                let (replay, has_more) =
                    messages::since(&state, me, room.room_id, room.after_seq.max(0), state.settings.ws_sync_limit)
                        .await?;
                let mut last = room.after_seq;
                for message in replay {
                    last = message.seq;
                    frames.push(ServerEvent::Message(message).to_frame().into());
                }
                let mut positions = conn.out.delivered();
                let delivered = positions.entry(room.room_id).or_insert(0);
                *delivered = (*delivered).max(last);
                rooms_out.push(json!({"room_id": room.room_id, "last_seq": last, "has_more": has_more}));
            }
            Ok(json!({"rooms": rooms_out}))
        }
        ClientEvent::History(history) => {
            to_value(&messages::history(&state, me, history.room_id, history.before_seq, None, history.limit).await?)
        }
        ClientEvent::Join(join) => {
            let (room, _) = rooms::join(&state, me, join.room_id, join.password).await?;
            // Attach this socket now so the reply is never ahead of the stream; the member_joined
            // event attaches the user's other sockets on every node.
            let effective = state.hub.attach(conn.session_id, &[(room.id, room.last_seq)]).await;
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
            let online = presence::online_among(&state, &query.user_ids).await;
            let mut db_conn = state.db_conn().await?;
            let mut out = Vec::with_capacity(query.user_ids.len());
            for user in &query.user_ids {
                if let Some(row) = db::users::by_id(&mut db_conn, *user).await? {
                    out.push(Presence {
                        user_id: row.id,
                        online: online.contains(&row.id),
                        last_seen_at: row.last_seen_at,
                    });
                }
            }
            to_value(&out)
        }
        ClientEvent::Auth(auth) => {
            let claims = state.tokens.verify(&auth.token)?;
            if claims.sub != me {
                return Err(ApiError::field("token", "belongs to another user"));
            }
            conn.user.expires_at = claims.exp;
            let expires_at = chrono::DateTime::from_timestamp(claims.exp as i64, 0);
            Ok(json!({ "expires_at": expires_at }))
        }
    }
}

fn hide_room(e: ApiError) -> ApiError {
    match e {
        ApiError::NotFound(Missing::Room) => ApiError::NotFound(Missing::Message),
        other => other,
    }
}

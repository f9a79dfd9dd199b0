//! Messages: send (idempotent, gap-free seq), edit, delete, clear, history, receipts, unreceived.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::db::group_commit::{Committed, NewSend};
use crate::db::models::MessageRow;
use crate::db::{self, is_unique_violation, DbConn};
use crate::error::{ApiError, ApiResult, Missing};
use crate::limits::Budget;
use crate::protocol::{History, Message, Receipt, Role, Unreceived, UnreceivedRoom};
use crate::service::rooms::Access;
use crate::state::AppState;
use crate::validate::{self, Checks};

/// A stored message and whether this call stored it (false: an idempotent retry found it).
pub struct Sent {
    pub message: Message,
    pub created: bool,
}

pub async fn send(
    state: &AppState,
    sender: Uuid,
    room_id: Uuid,
    content: &str,
    client_msg_id: Option<&str>,
) -> ApiResult<Sent> {
    state.metrics.messages_received_total.inc();
    validate::content(content, state.settings.max_message_bytes)?;
    Checks::new().add(validate::client_msg_id(client_msg_id)).finish()?;
    // One budget per user, whichever transport and node the sends come through.
    state.limits.take(Budget::Send, sender, None).await?;
    let send = NewSend {
        room_id,
        sender_id: sender,
        content: content.to_owned(),
        client_msg_id: client_msg_id.map(str::to_owned),
    };
    // The common case: stored in the node's next batch (group commit), one round trip for all of it.
    let message = match state.group_commit.store(send).await? {
        Committed::Stored(row) => Message::from(row),
        Committed::Refused => return refused(state, sender, room_id, client_msg_id).await,
        Committed::Alone => match store_alone(state, sender, room_id, content, client_msg_id).await? {
            Some(message) => message,
            None => return refused(state, sender, room_id, client_msg_id).await,
        },
    };
    state.metrics.messages_persisted_total.inc();
    // Persist, then publish: the caller's acknowledgement follows both.
    state.fanout.message_created(&message).await;
    Ok(Sent { message, created: true })
}

/// A message whose batch failed as a whole, in a transaction of its own. `None`: not stored, for one
/// of the reasons a batch refuses a message.
async fn store_alone(
    state: &AppState,
    sender: Uuid,
    room_id: Uuid,
    content: &str,
    client_msg_id: Option<&str>,
) -> ApiResult<Option<Message>> {
    let mut conn = state.db_conn().await?;
    match state
        .timed("insert_message", db::messages::insert_next(&mut conn, room_id, sender, content, client_msg_id))
        .await
    {
        Ok(row) => Ok(row.map(Message::from)),
        Err(e) if is_unique_violation(&e, db::messages::IDEMPOTENCY_INDEX) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Why a message was not stored, said as a lone send says it: the room is missing or the sender
/// is not a member (the same 404/403 rules as every room route), or the `client_msg_id` was used
/// before, which answers the stored message (an idempotent retry).
async fn refused(state: &AppState, sender: Uuid, room_id: Uuid, client_msg_id: Option<&str>) -> ApiResult<Sent> {
    let mut conn = state.db_conn().await?;
    Access::load(&mut conn, room_id, sender, false).await?.member()?;
    if let Some(id) = client_msg_id {
        if let Some(row) = db::messages::by_client_msg_id(&mut conn, sender, id).await? {
            if row.room_id != room_id {
                return Err(ApiError::field("client_msg_id", "was already used for a message in another room"));
            }
            return Ok(Sent { message: row.into(), created: false });
        }
    }
    Err(ApiError::NotFound(Missing::Room))
}

/// Loads a message of a room the caller can see; deleted messages count as missing for edits.
async fn load_message(
    conn: &mut DbConn,
    caller: Uuid,
    room_id: Uuid,
    message_id: Uuid,
) -> ApiResult<(Access, MessageRow)> {
    let access = Access::load(conn, room_id, caller, false).await?;
    access.member()?;
    let message = db::messages::find(conn, room_id, message_id)
        .await?
        .filter(|m| m.deleted_at.is_none() && m.seq > access.room.cleared_seq)
        .ok_or(ApiError::NotFound(Missing::Message))?;
    Ok((access, message))
}

/// The room a message lives in (WebSocket `edit`/`delete` name only the message).
pub async fn room_of(state: &AppState, message_id: Uuid) -> ApiResult<Uuid> {
    let mut conn = state.db_conn().await?;
    let row = db::messages::find_by_id(&mut conn, message_id).await?.ok_or(ApiError::NotFound(Missing::Message))?;
    Ok(row.room_id)
}

pub async fn edit(
    state: &AppState,
    caller: Uuid,
    room_id: Uuid,
    message_id: Uuid,
    content: &str,
) -> ApiResult<Message> {
    validate::content(content, state.settings.max_message_bytes)?;
    let mut conn = state.db_conn().await?;
    let (_, message) = load_message(&mut conn, caller, room_id, message_id).await?;
    if message.sender_id != caller {
        return Err(ApiError::Forbidden("only the author may edit a message"));
    }
    // The UPDATE skips a tombstone: a delete that commits between the read above and here wins,
    // and the edit answers 404 instead of bringing the content back.
    let message: Message =
        db::messages::edit(&mut conn, message_id, content).await?.ok_or(ApiError::NotFound(Missing::Message))?.into();
    drop(conn);
    state.fanout.message_edited(&message).await;
    Ok(message)
}

pub async fn delete(state: &AppState, caller: Uuid, room_id: Uuid, message_id: Uuid) -> ApiResult<Message> {
    let mut conn = state.db_conn().await?;
    let (access, message) = load_message(&mut conn, caller, room_id, message_id).await?;
    if message.sender_id != caller {
        access
            .require(Role::Admin)
            .map_err(|_| ApiError::Forbidden("only the author, the owner or an admin may delete a message"))?;
    }
    let message: Message = db::messages::tombstone(&mut conn, message_id).await?.into();
    drop(conn);
    state.fanout.message_deleted(&message).await;
    Ok(message)
}

/// Clears the history; returns the seq up to which it was cleared.
pub async fn clear(state: &AppState, caller: Uuid, room_id: Uuid) -> ApiResult<i64> {
    let mut conn = state.db_conn().await?;
    use diesel_async::AsyncConnection;
    let cleared = conn
        .transaction::<_, ApiError, _>(async |conn| {
            Access::load(conn, room_id, caller, true).await?.require(Role::Admin)?;
            Ok(db::messages::clear(conn, room_id).await?)
        })
        .await?;
    drop(conn);
    state.fanout.room_cleared(room_id, cleared).await;
    Ok(cleared)
}

/// A window of history, ascending. `after_seq` pages forward; otherwise the newest messages before
/// `before_seq` (or the end).
pub async fn history(
    state: &AppState,
    caller: Uuid,
    room_id: Uuid,
    before_seq: Option<i64>,
    after_seq: Option<i64>,
    limit: Option<i64>,
) -> ApiResult<History> {
    let limit = validate::limit(limit)?;
    Checks::new()
        .add(validate::seq("before_seq", before_seq))
        .add(validate::seq("after_seq", after_seq))
        .check(before_seq.is_none() || after_seq.is_none(), "after_seq", "give before_seq or after_seq, not both")
        .finish()?;
    if let (Some(before), Some(_)) = (before_seq, &state.db_replica) {
        if let Some(page) = Box::pin(history_from_replica(state, caller, room_id, before, limit)).await {
            state.metrics.db_replica_reads_total.with_label_values(&["replica"]).inc();
            return Ok(page);
        }
        state.metrics.db_replica_reads_total.with_label_values(&["primary"]).inc();
    }
    let mut conn = state.db_conn().await?;
    let access = Access::load(&mut conn, room_id, caller, false).await?;
    access.member()?;
    let floor = access.room.cleared_seq;
    let (items, has_more, next) = match after_seq {
        Some(after) => {
            let mut rows = state
                .timed("read_messages", db::messages::after(&mut conn, room_id, after.max(floor), limit + 1))
                .await?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            let next = rows.last().map(|m| m.seq);
            (rows, more, next)
        }
        None => {
            let mut rows =
                state.timed("read_messages", db::messages::before(&mut conn, room_id, before_seq, limit + 1)).await?;
            rows.retain(|m| m.seq > floor);
            let more = rows.len() as i64 > limit;
            if more {
                rows.remove(0);
            }
            let next = rows.first().map(|m| m.seq);
            (rows, more, next)
        }
    };
    Ok(History {
        items: items.into_iter().map(Message::from).collect(),
        has_more,
        next_cursor: if has_more { next.map(|s| s.to_string()) } else { None },
    })
}

/// A page going back, read on the replica when it can answer it as the primary would: it has the
/// caller's membership, and the room's seq up to the page's top (`before_seq - 1`: the client knows
/// that much exists). A replica lagging behind either, or failing, gives `None`: the primary answers.
async fn history_from_replica(
    state: &AppState,
    caller: Uuid,
    room_id: Uuid,
    before: i64,
    limit: i64,
) -> Option<History> {
    let replica = state.db_replica.as_ref()?;
    let mut conn = Box::pin(replica.get()).await.ok()?;
    let access = Access::load(&mut conn, room_id, caller, false).await.ok()?;
    access.member().ok()?;
    if access.room.last_seq < before - 1 {
        return None;
    }
    let floor = access.room.cleared_seq;
    let read = db::messages::before(&mut conn, room_id, Some(before), limit + 1);
    let mut rows = state.timed("read_messages_replica", read).await.ok()?;
    rows.retain(|m| m.seq > floor);
    let more = rows.len() as i64 > limit;
    if more {
        rows.remove(0);
    }
    let next = rows.first().map(|m| m.seq);
    Some(History {
        items: rows.into_iter().map(Message::from).collect(),
        has_more: more,
        next_cursor: if more { next.map(|s| s.to_string()) } else { None },
    })
}

/// A member's replay of one room (`sync`), read in chunks so that no chunk's messages are held
/// longer than it takes to write them. Only [`Replay::open`] makes one, after the membership check.
pub struct Replay {
    room_id: Uuid,
    /// Messages at or below this seq were cleared.
    floor: i64,
}

impl Replay {
    pub async fn open(state: &AppState, caller: Uuid, room_id: Uuid) -> ApiResult<Replay> {
        let mut conn = state.db_conn().await?;
        let access = Access::load(&mut conn, room_id, caller, false).await?;
        access.member()?;
        Ok(Replay { room_id, floor: access.room.cleared_seq })
    }

    /// Up to `limit` messages after `after_seq`, and whether more remain. The pooled connection is
    /// returned before the caller writes them, so a slow reader holds no connection.
    pub async fn next(&self, state: &AppState, after_seq: i64, limit: i64) -> ApiResult<(Vec<Message>, bool)> {
        let mut conn = state.db_conn().await?;
        let mut rows = state
            .timed("read_messages", db::messages::after(&mut conn, self.room_id, after_seq.max(self.floor), limit + 1))
            .await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok((rows.into_iter().map(Message::from).collect(), more))
    }
}

pub async fn receipts(
    state: &AppState,
    caller: Uuid,
    room_id: Uuid,
    delivered_seq: Option<i64>,
    read_seq: Option<i64>,
) -> ApiResult<Receipt> {
    Checks::new()
        .add(validate::seq("delivered_seq", delivered_seq))
        .add(validate::seq("read_seq", read_seq))
        .check(delivered_seq.is_some() || read_seq.is_some(), "delivered_seq", "give delivered_seq, read_seq or both")
        .finish()?;
    let mut conn = state.db_conn().await?;
    match db::messages::advance_cursors(&mut conn, room_id, caller, delivered_seq, read_seq).await? {
        Some(m) => {
            drop(conn);
            let receipt = Receipt { room_id, user_id: caller, delivered_seq: m.delivered_seq, read_seq: m.read_seq };
            state.fanout.receipt(&receipt, read_seq.is_some()).await;
            Ok(receipt)
        }
        None => {
            Access::load(&mut conn, room_id, caller, false).await?.member()?;
            Err(ApiError::NotFound(Missing::Room))
        }
    }
}

pub async fn unreceived(state: &AppState, caller: Uuid) -> ApiResult<Unreceived> {
    let per_room = state.settings.unreceived_limit;
    let total = state.settings.unreceived_max_messages;
    let mut conn = state.db_conn().await?;
    // One extra per room, and one extra in all, tell whether more are waiting.
    let mut rows =
        state.timed("unreceived", db::messages::unreceived(&mut conn, caller, per_room + 1, total + 1)).await?;
    drop(conn);
    let cut = rows.len() as i64 > total;
    rows.truncate(total as usize);
    let mut by_room: BTreeMap<Uuid, Vec<Message>> = BTreeMap::new();
    for row in rows {
        by_room.entry(row.room_id).or_default().push(row.into());
    }
    let last_room = by_room.keys().next_back().copied();
    let rooms = by_room
        .into_iter()
        .map(|(room_id, mut messages)| {
            // The total cap cuts the last room listed (rooms come in id order).
            let has_more = messages.len() as i64 > per_room || (cut && Some(room_id) == last_room);
            messages.truncate(per_room as usize);
            UnreceivedRoom { room_id, messages, has_more }
        })
        .collect();
    Ok(Unreceived { rooms, has_more: cut })
}

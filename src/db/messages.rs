//! Queries on `messages` and the receipt cursors in `room_members`.

use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::models::{MemberRow, MessageRow};
use super::schema::messages;
use super::DbConn;

/// The unique index that makes `(sender, client_msg_id)` idempotent.
pub const IDEMPOTENCY_INDEX: &str = "messages_idempotency_unique";

/// Allocates the room's next `seq`, stores the message and moves the sender's own cursors in one
/// statement, so one round trip does it all. The UPDATE holds the room row's lock until commit: senders of one room serialize, seq
/// order is commit order, and a failed insert rolls the increment back (no gaps). Returns `None`
/// when the room is gone or `sender` is not a member.
pub async fn insert_next(
    conn: &mut DbConn,
    room_id: Uuid,
    sender_id: Uuid,
    content: &str,
    client_msg_id: Option<&str>,
) -> Result<Option<MessageRow>, Error> {
    InsertNext { room_id, sender_id, id: Uuid::now_v7(), content, client_msg_id }.get_result(conn).await.optional()
}

/// The statement behind [`insert_next`], prepared once per connection (`db::prepared_statement!`).
struct InsertNext<'a> {
    room_id: Uuid,
    sender_id: Uuid,
    id: Uuid,
    content: &'a str,
    client_msg_id: Option<&'a str>,
}

super::prepared_statement!(InsertNext<'_>, InsertNextStatement);

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for InsertNext<'_> {
    fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        // Each value is bound where it is used (the room four times, the sender three): the text stays
        // fixed, which is what makes the statement cacheable.
        out.push_sql(
            "WITH next AS (
                 UPDATE rooms SET last_seq = last_seq + 1
                 WHERE id = ",
        );
        out.push_bind_param::<SqlUuid, _>(&self.room_id)?;
        out.push_sql(" AND deleted_at IS NULL AND EXISTS (SELECT 1 FROM room_members WHERE room_id = ");
        out.push_bind_param::<SqlUuid, _>(&self.room_id)?;
        out.push_sql(" AND user_id = ");
        out.push_bind_param::<SqlUuid, _>(&self.sender_id)?;
        out.push_sql(
            ") RETURNING last_seq),
             stored AS (
                 INSERT INTO messages (id, room_id, seq, sender_id, content, client_msg_id) SELECT ",
        );
        out.push_bind_param::<SqlUuid, _>(&self.id)?;
        out.push_sql(", ");
        out.push_bind_param::<SqlUuid, _>(&self.room_id)?;
        out.push_sql(", next.last_seq, ");
        out.push_bind_param::<SqlUuid, _>(&self.sender_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.content)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&self.client_msg_id)?;
        // The sender has seen what they sent: their own messages are neither unread nor unreceived.
        out.push_sql(
            " FROM next
                 RETURNING id, room_id, seq, sender_id, content, client_msg_id, created_at, edited_at, deleted_at),
             own_cursor AS (
                 UPDATE room_members SET delivered_seq = GREATEST(delivered_seq, stored.seq),
                                         read_seq = GREATEST(read_seq, stored.seq)
                 FROM stored WHERE room_members.room_id = ",
        );
        out.push_bind_param::<SqlUuid, _>(&self.room_id)?;
        out.push_sql(" AND room_members.user_id = ");
        out.push_bind_param::<SqlUuid, _>(&self.sender_id)?;
        out.push_sql(") SELECT * FROM stored");
        Ok(())
    }
}

/// One message of a batch for [`insert_batch`].
pub struct NewMessage<'a> {
    pub room_id: Uuid,
    pub sender_id: Uuid,
    pub content: &'a str,
    pub client_msg_id: Option<&'a str>,
}

/// A row [`insert_batch`] stored, with the position (0-based) of its input.
#[derive(QueryableByName)]
pub struct StoredInBatch {
    #[diesel(sql_type = BigInt)]
    ord: i64,
    #[diesel(embed)]
    pub row: MessageRow,
}

impl StoredInBatch {
    pub fn index(&self) -> usize {
        usize::try_from(self.ord - 1).unwrap_or(usize::MAX)
    }
}

/// Stores several messages, of one room or many, in one statement (group commit): per room, each
/// accepted message takes the next `seq` in input order, so several messages of one room in one
/// batch stay gap-free and in order. A message is left out, without failing the rest, when its
/// room is gone, its sender is not a member, or its `(sender, client_msg_id)` is already stored;
/// the caller tells those apart as a lone send does. Two inputs must not share a
/// `(sender, client_msg_id)` (the caller merges them first), or the statement fails on the
/// idempotency index; it also fails, as a whole and with nothing stored, when a concurrent
/// transaction commits the same `(sender, client_msg_id)` first. The caller then sends one by one.
///
/// Locks: the rooms' rows are locked in id order before anything else is written, so two batches
/// that share rooms wait for each other instead of deadlocking, and a lone send (one room) cannot
/// close a cycle either. `FOR UPDATE` in READ COMMITTED returns each row's latest committed
/// `last_seq`, which is where the batch's seqs start.
pub async fn insert_batch(conn: &mut DbConn, batch: &[NewMessage<'_>]) -> Result<Vec<StoredInBatch>, Error> {
    let query = InsertBatch {
        ids: batch.iter().map(|_| Uuid::now_v7()).collect(),
        room_ids: batch.iter().map(|m| m.room_id).collect(),
        sender_ids: batch.iter().map(|m| m.sender_id).collect(),
        contents: batch.iter().map(|m| m.content).collect(),
        client_msg_ids: batch.iter().map(|m| m.client_msg_id).collect(),
    };
    query.load(conn).await
}

/// The statement behind [`insert_batch`]: the inputs travel as five arrays, so the text is the
/// same for every batch size and is prepared once per connection.
struct InsertBatch<'a> {
    ids: Vec<Uuid>,
    room_ids: Vec<Uuid>,
    sender_ids: Vec<Uuid>,
    contents: Vec<&'a str>,
    client_msg_ids: Vec<Option<&'a str>>,
}

super::prepared_statement!(InsertBatch<'_>, InsertBatchStatement);

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for InsertBatch<'_> {
    fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        use diesel::sql_types::Array;
        out.push_sql("WITH input AS (SELECT * FROM unnest(");
        out.push_bind_param::<Array<SqlUuid>, _>(&self.ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<SqlUuid>, _>(&self.room_ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<SqlUuid>, _>(&self.sender_ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.contents)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.client_msg_ids)?;
        // ORDER BY before FOR UPDATE: PostgreSQL sorts, then locks row by row in that order. The
        // window numbers each room's accepted messages after the filters, so a message left out
        // takes no seq.
        out.push_sql(
            ") WITH ORDINALITY AS i (id, room_id, sender_id, content, client_msg_id, ord)),
             locked AS (
                 SELECT id, last_seq FROM rooms
                 WHERE id IN (SELECT room_id FROM input) AND deleted_at IS NULL
                 ORDER BY id FOR UPDATE),
             accepted AS (
                 SELECT i.id, i.room_id, i.sender_id, i.content, i.client_msg_id, i.ord,
                        l.last_seq + row_number() OVER (PARTITION BY i.room_id ORDER BY i.ord) AS seq
                 FROM input i JOIN locked l ON l.id = i.room_id
                 WHERE EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = i.room_id AND m.user_id = i.sender_id)
                   AND (i.client_msg_id IS NULL OR NOT EXISTS (
                        SELECT 1 FROM messages x WHERE x.sender_id = i.sender_id AND x.client_msg_id = i.client_msg_id))),
             bumped AS (
                 UPDATE rooms SET last_seq = top.seq
                 FROM (SELECT room_id, max(seq) AS seq FROM accepted GROUP BY room_id) top
                 WHERE rooms.id = top.room_id),
             stored AS (
                 INSERT INTO messages (id, room_id, seq, sender_id, content, client_msg_id)
                 SELECT id, room_id, seq, sender_id, content, client_msg_id FROM accepted ORDER BY room_id, seq
                 RETURNING id, room_id, seq, sender_id, content, client_msg_id, created_at, edited_at, deleted_at),
             own_cursor AS (
                 UPDATE room_members SET delivered_seq = GREATEST(delivered_seq, top.seq),
                                         read_seq = GREATEST(read_seq, top.seq)
                 FROM (SELECT room_id, sender_id, max(seq) AS seq FROM accepted GROUP BY room_id, sender_id) top
                 WHERE room_members.room_id = top.room_id AND room_members.user_id = top.sender_id)
             SELECT a.ord, s.id, s.room_id, s.seq, s.sender_id, s.content, s.client_msg_id,
                    s.created_at, s.edited_at, s.deleted_at
             FROM stored s JOIN accepted a ON a.id = s.id",
        );
        Ok(())
    }
}

pub async fn by_client_msg_id(
    conn: &mut DbConn,
    sender: Uuid,
    client_msg_id: &str,
) -> Result<Option<MessageRow>, Error> {
    messages::table
        .filter(messages::sender_id.eq(sender))
        .filter(messages::client_msg_id.eq(client_msg_id))
        .select(MessageRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A message of a room that was not cleared away.
pub async fn find(conn: &mut DbConn, room_id: Uuid, message_id: Uuid) -> Result<Option<MessageRow>, Error> {
    messages::table
        .find(message_id)
        .filter(messages::room_id.eq(room_id))
        .select(MessageRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Finds a message by id alone (WebSocket `edit`/`delete` carry no room id).
pub async fn find_by_id(conn: &mut DbConn, message_id: Uuid) -> Result<Option<MessageRow>, Error> {
    messages::table.find(message_id).select(MessageRow::as_select()).first(conn).await.optional()
}

/// Replaces a live message's content; `None` if it is gone or was deleted (never revives a tombstone).
pub async fn edit(conn: &mut DbConn, message_id: Uuid, content: &str) -> Result<Option<MessageRow>, Error> {
    diesel::update(messages::table.find(message_id).filter(messages::deleted_at.is_null()))
        .set((messages::content.eq(content), messages::edited_at.eq(diesel::dsl::now)))
        .returning(MessageRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Deletes a message's content but keeps its row, so its `seq` stays accounted for.
pub async fn tombstone(conn: &mut DbConn, message_id: Uuid) -> Result<MessageRow, Error> {
    diesel::update(messages::table.find(message_id))
        .set((messages::content.eq(""), messages::deleted_at.eq(diesel::dsl::now)))
        .returning(MessageRow::as_returning())
        .get_result(conn)
        .await
}

#[derive(QueryableByName)]
struct ClearedSeq {
    #[diesel(sql_type = BigInt)]
    cleared_seq: i64,
}

/// Clears a room's history up to its current `last_seq`; returns that seq. Seq numbering carries on.
pub async fn clear(conn: &mut DbConn, room_id: Uuid) -> Result<i64, Error> {
    let cleared: ClearedSeq = diesel::sql_query(
        "UPDATE rooms SET cleared_seq = last_seq, updated_at = now() WHERE id = $1 RETURNING cleared_seq",
    )
    .bind::<SqlUuid, _>(room_id)
    .get_result(conn)
    .await?;
    diesel::delete(messages::table.filter(messages::room_id.eq(room_id)).filter(messages::seq.le(cleared.cleared_seq)))
        .execute(conn)
        .await?;
    Ok(cleared.cleared_seq)
}

/// Up to `limit` messages with `after < seq`, ascending (sync and forward history).
pub async fn after(conn: &mut DbConn, room_id: Uuid, after_seq: i64, limit: i64) -> Result<Vec<MessageRow>, Error> {
    messages::table
        .filter(messages::room_id.eq(room_id))
        .filter(messages::seq.gt(after_seq))
        .select(MessageRow::as_select())
        .order(messages::seq.asc())
        .limit(limit)
        .load(conn)
        .await
}

/// Up to `limit` messages with `seq < before` (or the newest), returned ascending.
pub async fn before(
    conn: &mut DbConn,
    room_id: Uuid,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<MessageRow>, Error> {
    let mut query = messages::table
        .filter(messages::room_id.eq(room_id))
        .select(MessageRow::as_select())
        .order(messages::seq.desc())
        .limit(limit)
        .into_boxed();
    if let Some(before) = before_seq {
        query = query.filter(messages::seq.lt(before));
    }
    let mut rows = query.load(conn).await?;
    rows.reverse();
    Ok(rows)
}

/// For every room of `user`: up to `per_room` messages past their delivered cursor (and past a clear),
/// in (room, seq) order, at most `total` in all. One index range scan per room through the lateral
/// join, walked in room order, so the scan stops once `total` rows are out.
pub async fn unreceived(conn: &mut DbConn, user: Uuid, per_room: i64, total: i64) -> Result<Vec<MessageRow>, Error> {
    diesel::sql_query(
        "SELECT m.id, m.room_id, m.seq, m.sender_id, m.content, m.client_msg_id, m.created_at, m.edited_at, m.deleted_at
         FROM room_members rm
         JOIN rooms r ON r.id = rm.room_id AND r.deleted_at IS NULL
         CROSS JOIN LATERAL (
             SELECT * FROM messages m
             WHERE m.room_id = rm.room_id AND m.seq > GREATEST(rm.delivered_seq, r.cleared_seq)
             ORDER BY m.seq LIMIT $2) m
         WHERE rm.user_id = $1
         ORDER BY rm.room_id, m.seq
         LIMIT $3",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<BigInt, _>(per_room)
    .bind::<BigInt, _>(total)
    .load(conn)
    .await
}

/// Moves a member's cursors forward, never back and never past the room's `last_seq`; reading a
/// message implies it was delivered. Returns the cursors after the move, or `None` if not a member.
pub async fn advance_cursors(
    conn: &mut DbConn,
    room_id: Uuid,
    user_id: Uuid,
    delivered: Option<i64>,
    read: Option<i64>,
) -> Result<Option<MemberRow>, Error> {
    diesel::sql_query(
        "UPDATE room_members m SET
             read_seq = GREATEST(m.read_seq, LEAST(COALESCE($3, 0), r.last_seq)),
             delivered_seq = GREATEST(m.delivered_seq, LEAST(GREATEST(COALESCE($2, 0), COALESCE($3, 0)), r.last_seq))
         FROM rooms r
         WHERE m.room_id = $1 AND m.user_id = $4 AND r.id = m.room_id AND r.deleted_at IS NULL
         RETURNING m.room_id, m.user_id, m.role, m.joined_at, m.delivered_seq, m.read_seq",
    )
    .bind::<SqlUuid, _>(room_id)
    .bind::<Nullable<BigInt>, _>(delivered)
    .bind::<Nullable<BigInt>, _>(read)
    .bind::<SqlUuid, _>(user_id)
    .get_result(conn)
    .await
    .optional()
}

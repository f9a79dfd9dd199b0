//! Per-room order: every room is hashed onto one of a few shard tasks, which hands its messages to
//! local sockets in `seq` order without gaps or duplicates, filling any gap from PostgreSQL (a race
//! between senders on different nodes, a lost publish, a subscription that started late).

use std::sync::atomic::Ordering;
use std::sync::Weak;

use bytestring::ByteString;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::delivery::Batches;
use super::{Hub, Queued};
use crate::clock::unix_us;
use crate::db;
use crate::protocol::ws::ServerEvent;
use crate::protocol::Message;

pub(super) enum ShardWork {
    Message { room: Uuid, seq: i64, frame: ByteString, at_us: i64 },
    CatchUp { room: Uuid },
}

pub(super) const SHARDS: usize = 8;
const FILL_BATCH: i64 = 500;

impl Hub {
    /// Hands a room's message to its local sockets and advances the room's stream.
    pub(super) fn deliver_message(&self, room: Uuid, seq: i64, frame: &ByteString, at_us: i64) {
        let mut batches = Batches::default();
        {
            let state = self.read();
            let Some(entry) = state.rooms.get(&room) else { return };
            if entry.last_seq.fetch_max(seq, Ordering::AcqRel) >= seq {
                return;
            }
            for recipient in entry.recipients.values() {
                batches.push(recipient);
            }
        }
        self.deliver(batches, Queued::new(frame.clone(), Some((room, seq))), false);
        self.metrics.fanout_latency_seconds.observe((unix_us() - at_us).max(0) as f64 / 1e6);
    }

    pub(super) fn room_last_seq(&self, room: Uuid) -> Option<i64> {
        self.read().rooms.get(&room).map(|e| e.last_seq.load(Ordering::Acquire))
    }

    /// Delivers messages after the room's stream position, up to `upto` (or everything), from PostgreSQL.
    pub(super) async fn fill_from_db(&self, room: Uuid, upto: Option<i64>) {
        loop {
            let Some(last) = self.room_last_seq(room) else { return };
            if upto.is_some_and(|u| last >= u) {
                return;
            }
            let limit = upto.map_or(FILL_BATCH, |u| (u - last).min(FILL_BATCH));
            let rows = match self.db.get().await {
                Ok(mut conn) => db::messages::after(&mut conn, room, last, limit).await,
                Err(e) => {
                    tracing::warn!(error = %e, %room, "gap fill: no database connection");
                    return;
                }
            };
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, %room, "gap fill failed");
                    return;
                }
            };
            if rows.is_empty() {
                return;
            }
            let full_batch = rows.len() as i64 == limit;
            for row in rows {
                let message = Message::from(row);
                let seq = message.seq;
                let at_us = message.created_at.timestamp_micros();
                let frame = ByteString::from(ServerEvent::Message(message).to_frame());
                self.metrics.gap_filled_messages_total.inc();
                self.deliver_message(room, seq, &frame, at_us);
            }
            if !full_batch {
                return;
            }
        }
    }
}

pub(super) async fn shard_loop(hub: Weak<Hub>, mut rx: mpsc::UnboundedReceiver<ShardWork>) {
    while let Some(work) = rx.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match work {
            ShardWork::Message { room, seq, frame, at_us } => {
                let Some(last) = hub.room_last_seq(room) else { continue };
                if seq <= last {
                    continue;
                }
                if seq > last + 1 {
                    // Something before this one has not arrived (a race between senders on
                    // different nodes, or a lost publish). It is committed, since seq order is
                    // commit order: fetch it.
                    hub.fill_from_db(room, Some(seq - 1)).await;
                }
                hub.deliver_message(room, seq, &frame, at_us);
            }
            ShardWork::CatchUp { room } => hub.fill_from_db(room, None).await,
        }
    }
}

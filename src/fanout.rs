//! Turns what happened (a message stored, a member added…) into one serialized frame and one
//! PUBLISH on the right channel. Every node's hub then hands those bytes to its local sockets.
//! If the bus is down, the envelope goes straight to this node's hub, and other nodes pick up
//! messages from PostgreSQL (degraded mode).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::bus::{Bus, Envelope, Header, Kind};
use crate::hub::Hub;
use crate::protocol::ws::{
    MemberJoined, MemberLeft, MemberUpdated, MessageDeleted, Presence, RoomCleared, RoomDeleted, ServerEvent, Typing,
};
use crate::protocol::{Message, Receipt, Role, Room};

/// Waits between attempts to publish a membership change (about 1.5 s in all).
const MEMBERSHIP_RETRIES_MS: [u64; 4] = [50, 150, 400, 900];

/// How often messages whose PUBLISH failed are tried again.
const REPUBLISH_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Fanout {
    bus: Bus,
    hub: Arc<Hub>,
    /// Per room, the newest message whose PUBLISH failed (channel and envelope). Other nodes poll
    /// PostgreSQL only while their own bus is down: when this node alone lost Redis (a partition,
    /// a broken connection), they would not hear of these messages until the room's next one came
    /// over the bus, maybe never. Published again once publishing works, the newest one is enough:
    /// a node that sees its seq fills the gap below from PostgreSQL, and drops what it already had.
    unpublished: Arc<Mutex<HashMap<Uuid, (String, Envelope)>>>,
    /// The task that republishes them runs (one at a time, only while there is something to do).
    republishing: Arc<AtomicBool>,
}

impl Fanout {
    pub fn new(bus: Bus, hub: Arc<Hub>) -> Self {
        Fanout { bus, hub, unpublished: Arc::default(), republishing: Arc::default() }
    }

    /// `emit` for a new message: one that could not be published is delivered here and kept for
    /// [`Fanout::republish`].
    async fn emit_message(&self, room: Uuid, channel: String, header: Header, event: &ServerEvent) {
        let envelope = Envelope::new(header, event.to_frame());
        if self.bus.publish(&channel, &envelope).await {
            return;
        }
        self.hub.dispatch(envelope.clone());
        let seq = envelope.header.seq.unwrap_or(0);
        {
            let mut unpublished = self.unpublished.lock().unwrap_or_else(|e| e.into_inner());
            let newer = unpublished.get(&room).is_none_or(|(_, kept)| kept.header.seq.unwrap_or(0) < seq);
            if newer {
                unpublished.insert(room, (channel, envelope));
            }
        }
        if !self.republishing.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().republish());
        }
    }

    /// Publishes the kept messages again, every [`REPUBLISH_EVERY`] while this node's subscriber is
    /// connected, until none is left.
    async fn republish(self) {
        loop {
            tokio::time::sleep(REPUBLISH_EVERY).await;
            if !self.bus.is_connected() {
                continue;
            }
            let kept: Vec<(Uuid, String, Envelope)> = {
                let unpublished = self.unpublished.lock().unwrap_or_else(|e| e.into_inner());
                unpublished
                    .iter()
                    .map(|(room, (channel, envelope))| (*room, channel.clone(), envelope.clone()))
                    .collect()
            };
            for (room, channel, envelope) in kept {
                if !self.bus.publish(&channel, &envelope).await {
                    break;
                }
                let mut unpublished = self.unpublished.lock().unwrap_or_else(|e| e.into_inner());
                if unpublished.get(&room).is_some_and(|(_, kept)| kept.header.seq == envelope.header.seq) {
                    unpublished.remove(&room);
                }
            }
            let unpublished = self.unpublished.lock().unwrap_or_else(|e| e.into_inner());
            if unpublished.is_empty() {
                // Cleared under the lock: a failure after this starts a new task.
                self.republishing.store(false, Ordering::Release);
                return;
            }
        }
    }

    async fn emit(&self, channel: String, header: Header, event: &ServerEvent) {
        let envelope = Envelope::new(header, event.to_frame());
        if !self.bus.publish(&channel, &envelope).await {
            self.hub.dispatch(envelope);
        }
    }

    /// Like `emit`, for membership changes, which PostgreSQL cannot stand in for: a lost
    /// `member_left` would leave a removed member's sockets on other nodes attached to the room
    /// for as long as the bus stays up there. A failed PUBLISH is retried on a fresh connection
    /// (the usual cause is a connection that broke); only if Redis stays unreachable is the change
    /// applied locally alone, and the other nodes, degraded too, then reconcile from PostgreSQL.
    async fn emit_membership(&self, channel: String, header: Header, event: &ServerEvent) {
        let envelope = Envelope::new(header, event.to_frame());
        for backoff_ms in MEMBERSHIP_RETRIES_MS {
            if self.bus.publish(&channel, &envelope).await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
        }
        if !self.bus.publish(&channel, &envelope).await {
            tracing::error!(channel, "membership change not published; applied on this node only");
            self.hub.dispatch(envelope);
        }
    }

    fn room_header(kind: Kind, room: Uuid) -> Header {
        let mut header = Header::new(kind);
        header.room_id = Some(room);
        header
    }

    pub async fn message_created(&self, message: &Message) {
        let mut header = Self::room_header(Kind::Message, message.room_id);
        header.seq = Some(message.seq);
        header.at_us = message.created_at.timestamp_micros();
        let channel = self.bus.channels.room(message.room_id);
        self.emit_message(message.room_id, channel, header, &ServerEvent::Message(message.clone())).await;
    }

    pub async fn message_edited(&self, message: &Message) {
        let header = Self::room_header(Kind::Event, message.room_id);
        self.emit(self.bus.channels.room(message.room_id), header, &ServerEvent::MessageEdited(message.clone())).await;
    }

    pub async fn message_deleted(&self, message: &Message) {
        let header = Self::room_header(Kind::Event, message.room_id);
        let event = ServerEvent::MessageDeleted(MessageDeleted {
            room_id: message.room_id,
            message_id: message.id,
            seq: message.seq,
        });
        self.emit(self.bus.channels.room(message.room_id), header, &event).await;
    }

    pub async fn room_cleared(&self, room: Uuid, cleared_seq: i64) {
        let header = Self::room_header(Kind::Event, room);
        let event = ServerEvent::RoomCleared(RoomCleared { room_id: room, cleared_seq });
        self.emit(self.bus.channels.room(room), header, &event).await;
    }

    pub async fn typing(&self, room: Uuid, user: Uuid, username: &str) {
        let mut header = Self::room_header(Kind::Ephemeral, room);
        header.user_id = Some(user);
        let event = ServerEvent::Typing(Typing { room_id: room, user_id: user, username: username.to_owned() });
        self.emit(self.bus.channels.room(room), header, &event).await;
    }

    /// Read receipts go to the room (others show "seen"); delivery-only moves go to the user's own
    /// sessions (other devices update their unread badges) without bothering the room.
    pub async fn receipt(&self, receipt: &Receipt, read_moved: bool) {
        let event = ServerEvent::Receipt(receipt.clone());
        if read_moved {
            let header = Self::room_header(Kind::Event, receipt.room_id);
            self.emit(self.bus.channels.room(receipt.room_id), header, &event).await;
        } else {
            let mut header = Header::new(Kind::Event);
            header.user_id = Some(receipt.user_id);
            self.emit(self.bus.channels.user(receipt.user_id), header, &event).await;
        }
    }

    /// A user joined or was added: the room hears `member_joined`; the user's live sessions on every
    /// node start receiving the room from `last_seq` on.
    pub async fn member_joined(&self, room: Uuid, user: Uuid, role: Role, last_seq: i64) {
        let event = ServerEvent::MemberJoined(MemberJoined { room_id: room, user_id: user, role });
        let mut header = Self::room_header(Kind::MemberAdded, room);
        header.user_id = Some(user);
        header.seq = Some(last_seq);
        self.emit_membership(self.bus.channels.user(user), header, &event).await;
        self.emit_membership(self.bus.channels.room(room), Self::about(room, user), &event).await;
    }

    /// A room event about `user`, who hears it on their own channel: the room's copy skips them.
    fn about(room: Uuid, user: Uuid) -> Header {
        let mut header = Self::room_header(Kind::Event, room);
        header.user_id = Some(user);
        header
    }

    /// A user left or was removed: the room hears `member_left`, and so do the user's sessions,
    /// which then stop receiving the room.
    pub async fn member_left(&self, room: Uuid, user: Uuid, reason: &str) {
        let event = ServerEvent::MemberLeft(MemberLeft { room_id: room, user_id: user, reason: reason.to_owned() });
        self.emit_membership(self.bus.channels.room(room), Self::about(room, user), &event).await;
        let mut header = Self::room_header(Kind::MemberRemoved, room);
        header.user_id = Some(user);
        self.emit_membership(self.bus.channels.user(user), header, &event).await;
    }

    pub async fn member_updated(&self, room: Uuid, user: Uuid, role: Role) {
        let event = ServerEvent::MemberUpdated(MemberUpdated { room_id: room, user_id: user, role });
        self.emit(self.bus.channels.room(room), Self::room_header(Kind::Event, room), &event).await;
    }

    /// `room` is as any member sees it: without one viewer's cursors.
    pub async fn room_updated(&self, room: &Room) {
        let mut shared = room.clone();
        shared.my_role = None;
        shared.delivered_seq = None;
        shared.read_seq = None;
        shared.unread_count = None;
        let header = Self::room_header(Kind::Event, room.id);
        self.emit(self.bus.channels.room(room.id), header, &ServerEvent::RoomUpdated(shared)).await;
    }

    pub async fn room_deleted(&self, room: Uuid) {
        let event = ServerEvent::RoomDeleted(RoomDeleted { room_id: room });
        self.emit_membership(self.bus.channels.room(room), Self::room_header(Kind::RoomDeleted, room), &event).await;
    }

    pub async fn presence(&self, user: Uuid, online: bool, last_seen_at: Option<DateTime<Utc>>, rooms: Vec<Uuid>) {
        let mut header = Header::new(Kind::Presence);
        header.user_id = Some(user);
        header.rooms = rooms;
        let event = ServerEvent::Presence(Presence { user_id: user, online, last_seen_at });
        self.emit(self.bus.channels.presence(), header, &event).await;
    }
}

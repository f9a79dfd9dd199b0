//! Recovery after the bus was lost: when the subscriber reconnects, every local room is caught up
//! from PostgreSQL and local users' memberships are reconciled (membership events published while
//! it was down are gone); while it is down, PostgreSQL is polled so chat carries on, slower.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::order::ShardWork;
use super::{Hub, SessionId};
use crate::bus::BusEvent;
use crate::db;

impl Hub {
    /// Re-reads the memberships of local users from PostgreSQL and attaches/detaches their sessions
    /// to match. Membership events published while the bus was down were lost; without this a
    /// removed member would keep receiving the room (and an added one would not).
    pub async fn reconcile_memberships(&self) {
        let sessions: Vec<(SessionId, Uuid, HashSet<Uuid>)> =
            self.read().sessions.iter().map(|(id, (r, rooms))| (*id, r.user, rooms.clone())).collect();
        if sessions.is_empty() {
            return;
        }
        let mut users: Vec<Uuid> = sessions.iter().map(|(_, user, _)| *user).collect();
        users.sort();
        users.dedup();
        let rows = match self.db.get().await {
            Ok(mut conn) => db::rooms::memberships_of(&mut conn, &users).await,
            Err(e) => {
                tracing::warn!(error = %e, "membership reconcile: no database connection");
                return;
            }
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "membership reconcile: query failed; the next one retries");
                return;
            }
        };
        let mut wanted: HashMap<Uuid, HashMap<Uuid, i64>> = HashMap::new();
        for m in rows {
            wanted.entry(m.user_id).or_default().insert(m.room_id, m.last_seq);
        }
        for (session, user, joined) in sessions {
            let should = wanted.remove(&user).unwrap_or_default();
            for room in joined.iter().filter(|r| !should.contains_key(r)) {
                self.detach(session, *room);
            }
            let missing: Vec<(Uuid, i64)> =
                should.iter().filter(|(room, _)| !joined.contains(room)).map(|(r, s)| (*r, *s)).collect();
            if !missing.is_empty() {
                self.attach(session, &missing).await;
            }
            wanted.insert(user, should);
        }
    }

    /// Queues a catch-up for every room with local listeners (after the bus reconnects).
    pub fn catch_up_all(&self) {
        let rooms: Vec<Uuid> = self.read().rooms.keys().copied().collect();
        self.catch_up(&rooms);
    }
}

pub(super) async fn bus_loop(hub: Weak<Hub>, mut events: mpsc::UnboundedReceiver<BusEvent>) {
    while let Some(event) = events.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match event {
            BusEvent::Message(envelope) => hub.dispatch(envelope),
            BusEvent::Connected => {
                hub.catch_up_all();
                let hub = hub.clone();
                tokio::spawn(async move { hub.reconcile_memberships().await });
            }
            BusEvent::Disconnected => {}
        }
    }
}

/// While the bus is down, reads each local room's `last_seq` from PostgreSQL on an interval and
/// catches up the rooms that moved: chat across nodes keeps working, only slower.
pub(super) async fn degraded_poller(hub: Weak<Hub>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        if hub.bus.is_connected() {
            continue;
        }
        let positions: Vec<(Uuid, i64)> =
            hub.read().rooms.iter().map(|(id, e)| (*id, e.last_seq.load(Ordering::Acquire))).collect();
        if positions.is_empty() {
            continue;
        }
        hub.metrics.degraded_polls_total.inc();
        hub.reconcile_memberships().await;
        let ids: Vec<Uuid> = positions.iter().map(|(id, _)| *id).collect();
        let heads = match hub.db.get().await {
            Ok(mut conn) => match db::rooms::last_seqs(&mut conn, &ids).await {
                Ok(heads) => heads,
                Err(error) => {
                    tracing::warn!(%error, "degraded poll: reading room heads failed; next tick retries");
                    continue;
                }
            },
            Err(error) => {
                tracing::warn!(%error, "degraded poll: no database connection; next tick retries");
                continue;
            }
        };
        for (room, head) in heads {
            if positions.iter().any(|(id, last)| *id == room && head > *last) {
                hub.shard(room).send(ShardWork::CatchUp { room }).ok();
            }
        }
    }
}

//! Handing frames to sockets: each HTTP worker thread has a delivery task that queues a batch of one
//! frame's recipients to its own sockets (one cross-thread wake-up per worker, not per recipient);
//! a full queue closes a socket as a slow consumer (4008), and ephemeral frames are shed first.

use std::sync::Arc;

use bytestring::ByteString;
use tokio::sync::mpsc;
use uuid::Uuid;

use std::collections::HashSet;

use super::{Hub, Outbound, Queued, Recipient, WorkerId};
use crate::metrics::Metrics;
use crate::protocol::ws::close_code;

/// One frame for some of one worker's sockets, crossing threads in one piece.
pub(super) struct Delivery {
    recipients: Vec<Recipient>,
    item: Outbound,
    ephemeral: bool,
}

/// Recipients of one frame, grouped by the worker thread their sockets run on.
#[derive(Default)]
pub(super) struct Batches(Vec<Vec<Recipient>>);

impl Batches {
    pub(super) fn push(&mut self, recipient: &Recipient) {
        let index = recipient.worker.0;
        if index >= self.0.len() {
            self.0.resize_with(index + 1, Vec::new);
        }
        self.0[index].push(recipient.clone());
    }
}

impl Hub {
    /// Starts the delivery task of the calling thread, which must be an HTTP worker's (a
    /// `LocalSet`): sockets whose tasks run on this thread get their frames queued from here.
    pub fn add_worker(&self) -> WorkerId {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::task::spawn_local(worker_loop(rx, self.metrics.clone(), self.queue_capacity));
        let mut workers = self.workers.write().unwrap_or_else(|e| e.into_inner());
        workers.push(tx);
        WorkerId(workers.len() - 1)
    }

    /// Hands each worker its share of a frame's recipients. The send fails only if that worker's
    /// thread is gone; its sockets are then gone too, and queueing from here is harmless.
    pub(super) fn deliver(&self, batches: Batches, item: Outbound, ephemeral: bool) {
        let workers = self.workers.read().unwrap_or_else(|e| e.into_inner());
        for (index, recipients) in batches.0.into_iter().enumerate() {
            if recipients.is_empty() {
                continue;
            }
            let delivery = Delivery { recipients, item: item.clone(), ephemeral };
            let undelivered = match workers.get(index) {
                Some(worker) => worker.send(delivery).err().map(|e| e.0),
                None => Some(delivery),
            };
            if let Some(delivery) = undelivered {
                queue_all(&self.metrics, self.queue_capacity, delivery);
            }
        }
    }

    pub(super) fn deliver_room(&self, room: Uuid, frame: &ByteString, ephemeral: bool, skip_user: Option<Uuid>) {
        let mut batches = Batches::default();
        {
            let state = self.read();
            let Some(entry) = state.rooms.get(&room) else { return };
            for recipient in entry.recipients.values() {
                if Some(recipient.user) != skip_user {
                    batches.push(recipient);
                }
            }
        }
        self.deliver(batches, Queued::frame(frame), ephemeral);
    }

    pub(super) fn deliver_user(&self, user: Uuid, frame: &ByteString) {
        let mut batches = Batches::default();
        {
            let state = self.read();
            let Some(sessions) = state.users.get(&user) else { return };
            for session in sessions {
                if let Some((recipient, _)) = state.sessions.get(session) {
                    batches.push(recipient);
                }
            }
        }
        self.deliver(batches, Queued::frame(frame), false);
    }

    /// A presence change goes once to each local session that shares a room with the user.
    pub(super) fn deliver_presence(&self, rooms: &[Uuid], user: Option<Uuid>, frame: &ByteString) {
        let mut batches = Batches::default();
        {
            let state = self.read();
            let mut seen = HashSet::new();
            for room in rooms {
                let Some(entry) = state.rooms.get(room) else { continue };
                for (session, recipient) in &entry.recipients {
                    if Some(recipient.user) != user && seen.insert(*session) {
                        batches.push(recipient);
                    }
                }
            }
        }
        self.deliver(batches, Queued::frame(frame), true);
    }
}

/// Whether a frame goes into a socket's queue.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Queue,
    Shed,
}

/// Under pressure, ephemeral frames (typing, presence) are shed before any message: once a queue is
/// three-quarters full, only durable frames still go in, so the last quarter is kept for them.
fn admit(free_slots: usize, capacity: usize, ephemeral: bool) -> Admit {
    if ephemeral && free_slots < capacity / 4 {
        Admit::Shed
    } else {
        Admit::Queue
    }
}

/// One HTTP worker's delivery task: queues each batch to its sockets, on their own thread.
async fn worker_loop(mut inbox: mpsc::UnboundedReceiver<Delivery>, metrics: Arc<Metrics>, queue_capacity: usize) {
    let mut batch = Vec::new();
    while inbox.recv_many(&mut batch, 64).await > 0 {
        for delivery in batch.drain(..) {
            queue_all(&metrics, queue_capacity, delivery);
        }
    }
}

fn queue_all(metrics: &Metrics, queue_capacity: usize, delivery: Delivery) {
    let Delivery { recipients, item, ephemeral } = delivery;
    for recipient in &recipients {
        offer(metrics, queue_capacity, recipient, item.clone(), ephemeral);
    }
}

/// Queues a frame to one recipient. A full queue on a durable frame closes the socket (4008):
/// the client resyncs on reconnect. Ephemeral frames are shed once the queue is three-quarters full.
fn offer(metrics: &Metrics, queue_capacity: usize, recipient: &Recipient, item: Outbound, ephemeral: bool) {
    if admit(recipient.tx.capacity(), queue_capacity, ephemeral) == Admit::Shed {
        metrics.fanout_shed_total.inc();
        return;
    }
    match recipient.tx.try_send(item) {
        Ok(()) => metrics.fanout_frames_total.inc(),
        Err(mpsc::error::TrySendError::Full(_)) if ephemeral => metrics.fanout_shed_total.inc(),
        Err(mpsc::error::TrySendError::Full(_)) => {
            if recipient.control.close_code().is_none() {
                metrics.slow_consumer_closes_total.inc();
            }
            recipient.control.close(close_code::SLOW_CONSUMER);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_frames_are_shed_before_messages() {
        // An empty queue takes everything.
        assert_eq!(admit(16, 16, true), Admit::Queue);
        assert_eq!(admit(16, 16, false), Admit::Queue);
        // Three-quarters full: typing and presence are shed, messages still queue.
        assert_eq!(admit(3, 16, true), Admit::Shed);
        assert_eq!(admit(3, 16, false), Admit::Queue);
        // Full: messages hit the slow-consumer path (try_send fails), ephemeral ones are shed.
        assert_eq!(admit(0, 16, true), Admit::Shed);
        assert_eq!(admit(0, 16, false), Admit::Queue);
    }
}

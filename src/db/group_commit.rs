//! Group commit: a node's sends are written to PostgreSQL in batches, one statement and one
//! transaction each ([`messages::insert_batch`]), and every sender is answered only after its batch
//! commits. With one transaction per message, PostgreSQL's commits (a WAL flush each) set the ceiling
//! for direct messages; a batch pays one flush for all of its messages.
//!
//! Batches form by themselves, without a timer: a few writer tasks take whatever is queued, write
//! it, and come back for more. A lone message is written at once, alone (no wait for a batch to
//! fill); under load, the messages that arrive while the writers are busy go together in the next
//! batch, so the batch size follows the load. Per room, the rows' locks order the batches: seq order
//! is commit order, also across writers and nodes.

use std::collections::HashMap;
use std::sync::Arc;

use diesel::result::Error;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use super::messages::{self, NewMessage};
use super::models::MessageRow;
use super::{is_unique_violation, DbPool};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// A message to store, owned: it crosses from the sender's task to a writer's.
pub struct NewSend {
    pub room_id: Uuid,
    pub sender_id: Uuid,
    pub content: String,
    pub client_msg_id: Option<String>,
}

/// What became of one message of a batch.
#[derive(Debug)]
pub enum Committed {
    /// Stored now, with its seq.
    Stored(MessageRow),
    /// Not stored: the room is gone, the sender is not a member, or this `(sender, client_msg_id)`
    /// was stored before. The sender finds out which, as a lone send does.
    Refused,
    /// The batch failed as a whole and certainly stored nothing (a concurrent commit of the same
    /// `client_msg_id`, a deadlock): the sender stores the message on its own.
    Alone,
}

struct Pending {
    send: NewSend,
    answer: oneshot::Sender<Result<Committed, ApiError>>,
}

/// The handle senders use; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
    metrics: Arc<Metrics>,
}

/// The writers, until the node starts them (see `state::NodeTasks`).
pub struct GroupCommitTasks {
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    writers: usize,
    batch_max: usize,
    pool: DbPool,
    metrics: Arc<Metrics>,
}

impl GroupCommit {
    /// `writers` batches can be in flight at once (each holds a pooled connection while it writes);
    /// a batch holds at most `batch_max` messages.
    pub fn new(pool: DbPool, metrics: Arc<Metrics>, writers: usize, batch_max: usize) -> (Self, GroupCommitTasks) {
        let writers = writers.max(1);
        let batch_max = batch_max.max(1);
        // Room for every writer's next batch and the one after; beyond that, senders wait here
        // (backpressure) instead of piling up memory.
        let (queue, receiver) = mpsc::channel(writers * batch_max * 2);
        let tasks = GroupCommitTasks {
            queue: Arc::new(Mutex::new(receiver)),
            writers,
            batch_max,
            pool,
            metrics: metrics.clone(),
        };
        (GroupCommit { queue, metrics }, tasks)
    }

    /// Stores `send` in the next batch and waits for that batch's commit.
    pub async fn store(&self, send: NewSend) -> Result<Committed, ApiError> {
        let (answer, answered) = oneshot::channel();
        self.metrics.db_send_queued.inc();
        if self.queue.send(Pending { send, answer }).await.is_err() {
            // The writers are gone (the node is stopping): nothing was queued.
            self.metrics.db_send_queued.dec();
            return Ok(Committed::Alone);
        }
        // A writer that dropped the message without an answer stored nothing for it.
        answered.await.unwrap_or(Ok(Committed::Alone))
    }
}

impl GroupCommitTasks {
    /// Starts the writers on the current runtime.
    pub fn spawn(self) {
        for _ in 0..self.writers {
            let writer = Writer {
                queue: self.queue.clone(),
                batch_max: self.batch_max,
                pool: self.pool.clone(),
                metrics: self.metrics.clone(),
            };
            tokio::spawn(writer.run());
        }
    }
}

struct Writer {
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    batch_max: usize,
    pool: DbPool,
    metrics: Arc<Metrics>,
}

impl Writer {
    async fn run(self) {
        loop {
            let mut batch = Vec::new();
            {
                // One writer at a time waits for the next message and takes, with it, whatever queued
                // up behind it; the others are writing meanwhile.
                let mut queue = self.queue.lock().await;
                let Some(first) = queue.recv().await else { return };
                batch.push(first);
                while batch.len() < self.batch_max {
                    match queue.try_recv() {
                        Ok(pending) => batch.push(pending),
                        Err(_) => break,
                    }
                }
            }
            self.metrics.db_send_queued.sub(batch.len() as i64);
            self.write(batch).await;
        }
    }

    async fn write(&self, batch: Vec<Pending>) {
        let mut conn = match self.pool.get().await {
            Ok(conn) => conn,
            Err(e) => {
                let error = e.to_string();
                for pending in batch {
                    let _ = pending.answer.send(Err(ApiError::Unavailable(error.clone().into())));
                }
                return;
            }
        };
        // A retry sent before the first try was answered can land in the same batch: only the first
        // `(sender, client_msg_id)` goes to PostgreSQL, the others share its fate as repeats.
        let mut first_of: HashMap<(Uuid, &str), usize> = HashMap::new();
        let mut repeat_of: Vec<Option<usize>> = Vec::with_capacity(batch.len());
        let mut inputs = Vec::with_capacity(batch.len());
        let mut input_of: Vec<usize> = Vec::with_capacity(batch.len());
        for (i, pending) in batch.iter().enumerate() {
            let send = &pending.send;
            if let Some(id) = send.client_msg_id.as_deref() {
                if let Some(&first) = first_of.get(&(send.sender_id, id)) {
                    repeat_of.push(Some(first));
                    continue;
                }
                first_of.insert((send.sender_id, id), i);
            }
            repeat_of.push(None);
            input_of.push(i);
            inputs.push(NewMessage {
                room_id: send.room_id,
                sender_id: send.sender_id,
                content: &send.content,
                client_msg_id: send.client_msg_id.as_deref(),
            });
        }

        let started = std::time::Instant::now();
        let outcome = if let [lone] = inputs.as_slice() {
            // Alone: the one-message statement is the cheaper plan.
            lone_insert(&mut conn, lone).await.map(|stored| vec![stored])
        } else {
            messages::insert_batch(&mut conn, &inputs).await.map(|rows| {
                let mut stored: Vec<Option<MessageRow>> = (0..inputs.len()).map(|_| None).collect();
                for row in rows {
                    if let Some(slot) = stored.get_mut(row.index()) {
                        *slot = Some(row.row);
                    }
                }
                stored
            })
        };
        drop(conn);
        let query = if inputs.len() == 1 { "insert_message" } else { "insert_message_batch" };
        self.metrics.db_query_duration_seconds.with_label_values(&[query]).observe(started.elapsed().as_secs_f64());

        let mut results: Vec<Option<Committed>> = (0..batch.len()).map(|_| None).collect();
        // Set when the batch failed in a way that a lone retry would not mend, or might repeat: the
        // senders get the error, as a lone send would.
        let mut failed: Option<(bool, String)> = None;
        match outcome {
            Ok(stored) => {
                self.metrics.db_send_batches_total.inc();
                self.metrics.db_send_batched_messages_total.inc_by(inputs.len() as u64);
                for (row, &i) in stored.into_iter().zip(&input_of) {
                    results[i] = Some(row.map_or(Committed::Refused, Committed::Stored));
                }
            }
            Err(error) if inputs.len() > 1 && stored_nothing(&error) => {
                tracing::debug!(%error, messages = inputs.len(), "batch not stored; its senders store alone");
            }
            Err(error) => {
                // A lost connection may have lost the answer to a commit that happened: storing the
                // messages again could store them twice. The senders say 503, and a client retries
                // with its client_msg_id, which finds what was stored.
                let message = error.to_string();
                let unavailable = matches!(ApiError::from(error), ApiError::Unavailable(_));
                tracing::warn!(error = %message, messages = inputs.len(), "batch of sends failed");
                failed = Some((unavailable, message));
            }
        }
        if let Some((unavailable, message)) = failed {
            for pending in batch {
                let error = if unavailable {
                    ApiError::Unavailable(message.clone().into())
                } else {
                    ApiError::internal(std::io::Error::other(message.clone()))
                };
                let _ = pending.answer.send(Err(error));
            }
            return;
        }
        // A repeat shares its first's fate: stored now or refused, the repeat is a retry that finds
        // it; not settled, it goes alone too.
        for (i, first) in repeat_of.iter().enumerate() {
            if let Some(first) = *first {
                results[i] = Some(if results[first].is_some() { Committed::Refused } else { Committed::Alone });
            }
        }
        // Answer in seq order, so that on this thread the senders publish in that order too (the
        // receivers restore order either way; this saves them the wait).
        let mut answers: Vec<(Pending, Committed)> = batch
            .into_iter()
            .zip(results)
            .map(|(pending, result)| (pending, result.unwrap_or(Committed::Alone)))
            .collect();
        answers.sort_by_key(|(_, committed)| match committed {
            Committed::Stored(row) => (0, row.room_id, row.seq),
            _ => (1, Uuid::nil(), 0),
        });
        for (pending, committed) in answers {
            let _ = pending.answer.send(Ok(committed));
        }
    }
}

/// Whether a batch's error certainly rolled it back before anything committed, so that storing its
/// messages one by one cannot store one twice: the idempotency index (a concurrent commit of one of
/// its `client_msg_id`s) or a deadlock or serialization failure.
fn stored_nothing(error: &Error) -> bool {
    use diesel::result::DatabaseErrorKind;
    match error {
        Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        Error::DatabaseError(DatabaseErrorKind::Unknown, info) => info.message().starts_with("deadlock detected"),
        other => is_unique_violation(other, messages::IDEMPOTENCY_INDEX),
    }
}

/// One message by the one-message statement, with the batch's outcomes: a repeat of a stored
/// `client_msg_id` is refused (the sender finds the stored one), as in a batch.
async fn lone_insert(conn: &mut super::DbConn, message: &NewMessage<'_>) -> Result<Option<MessageRow>, Error> {
    match messages::insert_next(conn, message.room_id, message.sender_id, message.content, message.client_msg_id).await
    {
        Err(e) if is_unique_violation(&e, messages::IDEMPOTENCY_INDEX) => Ok(None),
        other => other,
    }
}

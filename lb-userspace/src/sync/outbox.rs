//! The daemon's messages to the peer, waiting for the link: two queues, so
//! that configuration and admin changes never wait behind, or are dropped
//! for, bulk session traffic.
//!
//! - **Control** (`Config`, `Admin`, `Applied`): always taken, and always sent first.
//!   They are few and small (one per `lbctl` change or reload), so the queue
//!   needs no bound of its own.
//! - **Sessions**, the stream's `Pass` marks and tracked connections, in
//!   order: batches bounded
//!   in bytes ([`SESSION_QUEUE_BYTES`]). A batch that does not fit is
//!   refused and counted, and the daemon has the stream send its entries
//!   again ([`crate::sync::StreamTracker`]); the stream also slows down well
//!   before the bound.
//!
//! Tokio's mpsc channels bound messages, not bytes, and have no priority;
//! this is a mutex-guarded pair of queues with a `Notify`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::Notify;

use super::{Message, SessionEntry, TrackedConnection};

/// Bytes of session batches that may wait for the link.
pub const SESSION_QUEUE_BYTES: usize = 64 << 20;

/// Roughly what a session entry costs in memory (its service name aside).
const ENTRY_OVERHEAD: usize = std::mem::size_of::<SessionEntry>();

#[derive(Debug, Default)]
struct Queues {
    control: VecDeque<Message>,
    sessions: VecDeque<(Message, usize)>,
    session_bytes: usize,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    queues: Mutex<Queues>,
    ready: Notify,
}

/// The daemon's end.
#[derive(Debug, Clone)]
pub struct Outbox(Arc<Shared>);

/// The link's end. Dropping it closes the outbox.
#[derive(Debug)]
pub struct OutboxReceiver(Arc<Shared>);

/// A batch of sessions that did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the queue to the peer holds {queued} bytes of sessions already (at most {SESSION_QUEUE_BYTES}): a batch of {entries} entries was not queued")]
pub struct SessionsDropped {
    /// Bytes queued.
    pub queued: usize,
    /// Entries in the refused batch.
    pub entries: usize,
}

/// An outbox and its receiving end.
#[must_use]
pub fn outbox() -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared::default());
    (Outbox(Arc::clone(&shared)), OutboxReceiver(shared))
}

fn size_of_sessions(entries: &[SessionEntry]) -> usize {
    entries
        .iter()
        .map(|e| ENTRY_OVERHEAD + e.service.len())
        .sum()
}

fn size_of_connections(entries: &[TrackedConnection]) -> usize {
    entries
        .iter()
        .map(|e| std::mem::size_of::<TrackedConnection>() + e.service.len())
        .sum()
}

impl Outbox {
    /// Queues `message`: control messages always, session batches while they
    /// fit in [`SESSION_QUEUE_BYTES`].
    ///
    /// # Errors
    /// [`SessionsDropped`] for a session batch that does not fit.
    pub fn push(&self, message: Message) -> Result<(), SessionsDropped> {
        let mut q = self.0.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match &message {
            Message::Sessions { .. } | Message::Connections { .. } => {
                let (bytes, entries) = match &message {
                    Message::Sessions { entries, .. } => (size_of_sessions(entries), entries.len()),
                    Message::Connections { entries } => {
                        (size_of_connections(entries), entries.len())
                    }
                    _ => (0, 0),
                };
                if q.session_bytes + bytes > SESSION_QUEUE_BYTES && !q.sessions.is_empty() {
                    return Err(SessionsDropped {
                        queued: q.session_bytes,
                        entries,
                    });
                }
                q.session_bytes += bytes;
                q.sessions.push_back((message, bytes));
            }
            // Behind the sessions it marks the end of, and never refused:
            // it is a few bytes, and the stream's resumption rests on it.
            Message::Pass { .. } => q.sessions.push_back((message, 0)),
            Message::Config { .. } | Message::Admin { .. } | Message::Applied { .. } => {
                q.control.push_back(message);
            }
        }
        drop(q);
        self.0.ready.notify_one();
        Ok(())
    }

    /// Bytes of sessions waiting.
    #[must_use]
    pub fn session_bytes(&self) -> usize {
        self.0
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .session_bytes
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // The last daemon handle going closes the outbox (the receiver's
        // `recv` answers `None`), as an mpsc channel would.
        if Arc::strong_count(&self.0) == 2 {
            self.0
                .queues
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .closed = true;
            self.0.ready.notify_one();
        }
    }
}

impl OutboxReceiver {
    /// The next message, control first; `None` once the daemon has dropped
    /// every [`Outbox`] and nothing is left.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            let notified = self.0.ready.notified();
            {
                let mut q = self.0.queues.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(message) = q.control.pop_front() {
                    return Some(message);
                }
                if let Some((message, bytes)) = q.sessions.pop_front() {
                    q.session_bytes -= bytes;
                    return Some(message);
                }
                if q.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::sync::fixtures::change;

    fn sessions(n: usize) -> Message {
        Message::Sessions {
            entries: (0..n)
                .map(|i| SessionEntry {
                    service: "web".into(),
                    client: Ipv4Addr::from(u32::try_from(i).unwrap_or(0)),
                    server_address: Ipv4Addr::new(198, 18, 0, 21),
                    age_ms: 0,
                })
                .collect(),
            snapshot: None,
        }
    }

    #[tokio::test]
    async fn admin_changes_overtake_sessions_and_are_never_refused() {
        let (tx, mut rx) = outbox();
        let batch = sessions(100_000);
        let mut refused = 0;
        for _ in 0..64 {
            if tx.push(batch.clone()).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0, "the session queue is bounded in bytes");
        assert!(tx.session_bytes() <= SESSION_QUEUE_BYTES);
        let admin = Message::Admin {
            changes: vec![change(1)],
        };
        assert_eq!(tx.push(admin.clone()), Ok(()), "control is always taken");
        assert_eq!(rx.recv().await, Some(admin), "and sent first");
        assert!(matches!(rx.recv().await, Some(Message::Sessions { .. })));
        drop(tx);
        let mut left = 0;
        while rx.recv().await.is_some() {
            left += 1;
        }
        assert_eq!(
            left,
            64 - refused - 1,
            "then everything queued, then the end"
        );
    }
}

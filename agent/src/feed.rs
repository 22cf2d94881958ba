//! Where a session's inbound messages come from: a [`Feed`] is either a NATS subscription of its own (the real
//! agent: one for its control inbox, one for `muster.cmd.<host>`) or a [`Mailbox`] that one shared wildcard
//! subscription routes into by subject (`muster-swarm`, where 100k simulated hosts cannot each afford two
//! subscriptions). The subjects on the wire are the same either way.
//!
//! A mailbox is a small single-producer, single-consumer queue: an idle one costs one allocation of about a
//! hundred bytes, where a client subscription costs a channel block of 32 messages (≈6 KiB) and a server-side
//! subscription.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_nats::{Message, Subscriber};
use futures::task::AtomicWaker;
use futures::Stream;

/// One session's stream of inbound messages on one subject.
#[derive(Debug)]
pub enum Feed {
    /// A subscription of the session's own.
    Subscription(Subscriber),
    /// Messages a shared subscription routed to this session.
    Mailbox(MailboxReceiver),
}

impl Stream for Feed {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match self.get_mut() {
            Self::Subscription(sub) => Pin::new(sub).poll_next(cx),
            Self::Mailbox(mailbox) => Pin::new(mailbox).poll_next(cx),
        }
    }
}

/// The router's end of a mailbox.
#[derive(Debug)]
pub struct Mailbox {
    shared: Arc<Shared>,
}

/// The session's end of a mailbox. The stream ends when the [`Mailbox`] is dropped and everything in it was read.
#[derive(Debug)]
pub struct MailboxReceiver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<Message>>,
    /// Messages kept before new ones are dropped: a session that stopped reading must not grow without bound.
    capacity: usize,
    waker: AtomicWaker,
    closed: AtomicBool,
}

/// A message did not fit: the mailbox already holds its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("mailbox full: message dropped")]
pub struct MailboxFull;

/// A mailbox holding at most `capacity` unread messages (at least one).
pub fn mailbox(capacity: usize) -> (Mailbox, MailboxReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        capacity: capacity.max(1),
        waker: AtomicWaker::new(),
        closed: AtomicBool::new(false),
    });
    (Mailbox { shared: shared.clone() }, MailboxReceiver { shared })
}

impl Mailbox {
    /// Queues `message` for the session, or drops it if the mailbox is full. Never waits.
    pub fn push(&self, message: Message) -> Result<(), MailboxFull> {
        {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.len() >= self.shared.capacity {
                return Err(MailboxFull);
            }
            queue.push_back(message);
        }
        self.shared.waker.wake();
        Ok(())
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.waker.wake();
    }
}

impl Stream for MailboxReceiver {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let shared = &self.shared;
        // Registered before looking, so a push between the look and the return still wakes this task.
        shared.waker.register(cx.waker());
        let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(message) = queue.pop_front() {
            if queue.is_empty() && queue.capacity() > 0 {
                // Most mailboxes see a message now and then: give the memory back rather than keep a buffer per
                // idle session.
                *queue = VecDeque::new();
            }
            return Poll::Ready(Some(message));
        }
        if shared.closed.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use std::time::Duration;

    fn message(subject: &str) -> Message {
        Message {
            subject: subject.into(),
            reply: None,
            payload: Default::default(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[tokio::test]
    async fn delivers_in_order_then_ends_when_the_router_is_gone() {
        let (tx, mut rx) = mailbox(8);
        tx.push(message("a")).unwrap();
        tx.push(message("b")).unwrap();
        assert_eq!(rx.next().await.unwrap().subject.as_str(), "a");
        assert_eq!(rx.next().await.unwrap().subject.as_str(), "b");
        drop(tx);
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken() {
        let (tx, mut rx) = mailbox(8);
        let reader = tokio::spawn(async move { rx.next().await.map(|m| m.subject.to_string()) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.push(message("late")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader).await.expect("reader never woken").unwrap();
        assert_eq!(got.as_deref(), Some("late"));
    }

    #[test]
    fn a_full_mailbox_drops() {
        let (tx, _rx) = mailbox(2);
        assert!(tx.push(message("1")).is_ok());
        assert!(tx.push(message("2")).is_ok());
        assert_eq!(tx.push(message("3")), Err(MailboxFull));
    }
}

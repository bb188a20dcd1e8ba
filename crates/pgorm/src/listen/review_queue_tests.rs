//! Review finding 2: a `DropOldest` queue keeps the dropped notifications'
//! text alive through the kept notifications of the same read, so a queue
//! that holds one short notification can pin a whole read (up to tens of
//! kilobytes). docs/en/performance.md says "a queue that drops cannot pin
//! more text than it holds"; only `DropNewest` detached.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use std::time::SystemTime;

use crate::listen::config::QueuePolicy;
use crate::listen::event::{ListenerEvent, RawEvent, RawNotification};
use crate::listen::queue::{EventQueue, Receiver};
use crate::tap::ReadText;

/// One read of `count` notifications "c<n>", sharing one text.
fn one_read(count: u32) -> (Arc<ReadText>, VecDeque<RawEvent>) {
    let mut text = String::new();
    let mut bounds = Vec::new();
    for n in 0..count {
        let at = text.len() as u32;
        text.push('c');
        let split = text.len() as u32;
        text.push_str(&n.to_string());
        bounds.push(((at, split), (split, text.len() as u32)));
    }
    let text = ReadText::shared(SystemTime::UNIX_EPOCH, text);
    let read = bounds
        .into_iter()
        .map(|(channel, payload)| {
            ListenerEvent::Notification(RawNotification::new(1, text.clone(), channel, payload))
        })
        .collect();
    (text, read)
}

fn drain(queue: &Arc<EventQueue>) -> Vec<String> {
    let mut receiver = Receiver::new(queue.clone());
    let mut seen = Vec::new();
    while let Some(Some(Ok(event))) = receiver.try_next() {
        seen.push(match event {
            ListenerEvent::Notification(n) => n.payload,
            ListenerEvent::Lagged { dropped } => format!("L{dropped}"),
            ListenerEvent::Reconnected { generation } => format!("R{generation}"),
        });
    }
    seen
}

/// Finding 2.
#[test]
fn review_f2_drop_oldest_keeps_no_dropped_text_alive() {
    for capacity in [1usize, 2, 3, 7, 500] {
        let queue = Arc::new(EventQueue::new(capacity, QueuePolicy::DropOldest));
        // Some of the read fits (queued as it is), the rest overflows.
        let (text, mut read) = one_read(1000);
        let mut first: VecDeque<RawEvent> = read.drain(..capacity / 2).collect();
        let _ = queue.push_batch(&mut first, Waker::noop());
        let _ = queue.push_batch(&mut read, Waker::noop());
        drop(read);
        assert_eq!(
            Arc::strong_count(&text),
            1,
            "a queue of {capacity} pins the text of all 1000"
        );
        let seen = drain(&queue);
        assert_eq!(seen[0], format!("L{}", 1000 - capacity));
        assert_eq!(seen.last().map(String::as_str), Some("999"));
        assert_eq!(seen.len(), capacity + 1);
    }
}

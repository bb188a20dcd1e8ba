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

/// One read of `count` notifications "c<n>", sharing one text.
fn one_read(count: u32) -> (Arc<str>, VecDeque<RawEvent>) {
    let mut text = String::new();
    let mut bounds = Vec::new();
    for n in 0..count {
        let at = text.len() as u32;
        text.push('c');
        let split = text.len() as u32;
        text.push_str(&n.to_string());
        bounds.push(((at, split), (split, text.len() as u32)));
    }
    let text: Arc<str> = Arc::from(text);
    let read = bounds
        .into_iter()
        .map(|(channel, payload)| {
            ListenerEvent::Notification(RawNotification::new(
                1,
                SystemTime::UNIX_EPOCH,
                text.clone(),
                channel,
                payload,
            ))
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
    let queue = Arc::new(EventQueue::new(1, QueuePolicy::DropOldest));
    let (text, mut read) = one_read(1000);
    let _ = queue.push_batch(&mut read, Waker::noop());
    drop(read);
    assert_eq!(
        Arc::strong_count(&text),
        1,
        "a queue holding one notification pins the text of all 1000"
    );
    assert_eq!(drain(&queue), ["L999", "999"]);
}

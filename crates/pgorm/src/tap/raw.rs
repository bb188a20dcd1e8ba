//! [`RawNotification`], a notification as the tap lifts it: outside the
//! `listen` module so that the tap (always built, used by `connect`)
//! compiles without the `listen` feature.

use std::sync::Arc;
use std::time::SystemTime;

/// The text of one read's notifications ("channel\0payload" after one
/// another), shared by all of them, and when it was read.
#[derive(Debug)]
pub(crate) struct ReadText {
    received_at: SystemTime,
    text: String,
}

impl ReadText {
    /// A shared text read at `received_at`.
    pub(crate) fn shared(received_at: SystemTime, text: String) -> Arc<ReadText> {
        Arc::new(ReadText { received_at, text })
    }
}

/// A notification as it travels from the connection to the consumer: its
/// channel and payload are stretches of a text shared by every notification
/// read in the same wake-up, so reading it allocates nothing per
/// notification. `to_notification` makes the public, owned form.
///
/// Small (32 bytes: the time it was read is the read's, kept with the
/// text), as it is moved from buffer to buffer on its way to the consumer.
#[derive(Clone)]
pub(crate) struct RawNotification {
    pub(crate) process_id: i32,
    read: Arc<ReadText>,
    channel: (u32, u32),
    payload: (u32, u32),
}

impl RawNotification {
    /// `text[channel.0..channel.1]` and `text[payload.0..payload.1]` of
    /// `read`'s text; the bounds must be char boundaries of it.
    pub(crate) fn new(
        process_id: i32,
        read: Arc<ReadText>,
        channel: (u32, u32),
        payload: (u32, u32),
    ) -> Self {
        debug_assert!(read
            .text
            .get(channel.0 as usize..channel.1 as usize)
            .is_some());
        debug_assert!(read
            .text
            .get(payload.0 as usize..payload.1 as usize)
            .is_some());
        RawNotification {
            process_id,
            read,
            channel,
            payload,
        }
    }

    /// A notification with a text of its own.
    pub(crate) fn from_parts(
        process_id: i32,
        channel: &str,
        payload: &str,
        received_at: SystemTime,
    ) -> Self {
        let mut text = String::with_capacity(channel.len() + payload.len());
        text.push_str(channel);
        text.push_str(payload);
        let split = channel.len() as u32;
        let end = text.len() as u32;
        RawNotification::new(
            process_id,
            ReadText::shared(received_at, text),
            (0, split),
            (split, end),
        )
    }

    /// When it was read from the connection.
    #[inline]
    pub(crate) fn received_at(&self) -> SystemTime {
        self.read.received_at
    }

    #[inline]
    pub(crate) fn channel(&self) -> &str {
        &self.read.text[self.channel.0 as usize..self.channel.1 as usize]
    }

    #[inline]
    pub(crate) fn payload(&self) -> &str {
        &self.read.text[self.payload.0 as usize..self.payload.1 as usize]
    }

    /// Whether `self` and `other` are stretches of the same text.
    pub(crate) fn shares_text(&self, other: &RawNotification) -> bool {
        Arc::ptr_eq(&self.read, &other.read)
    }

    /// Moves this notification to a text of its own, so that it keeps no
    /// other notification's text alive.
    pub(crate) fn detach(&mut self) {
        let own = (self.channel.1 - self.channel.0) + (self.payload.1 - self.payload.0);
        if self.read.text.len() == own as usize {
            // Its text holds nothing else already.
            return;
        }
        *self = RawNotification::from_parts(
            self.process_id,
            self.channel(),
            self.payload(),
            self.received_at(),
        );
    }

    /// Writes this notification over `notification`, reusing its strings'
    /// memory: the router's spare notifications are filled in this way.
    #[cfg(feature = "listen")]
    #[inline]
    pub(crate) fn fill(&self, notification: &mut crate::listen::PgNotification) {
        notification.process_id = self.process_id;
        notification.received_at = self.received_at();
        notification.channel.clear();
        notification.channel.push_str(self.channel());
        notification.payload.clear();
        notification.payload.push_str(self.payload());
    }

    /// The owned, public form.
    #[cfg(feature = "listen")]
    pub(crate) fn to_notification(&self) -> crate::listen::PgNotification {
        crate::listen::PgNotification {
            process_id: self.process_id,
            channel: self.channel().to_owned(),
            payload: self.payload().to_owned(),
            received_at: self.received_at(),
        }
    }
}

/// Equal when the notifications are, as `PgNotification`s compare: where
/// the strings lie in a read's text is no part of it.
impl PartialEq for RawNotification {
    fn eq(&self, other: &Self) -> bool {
        self.process_id == other.process_id
            && self.received_at() == other.received_at()
            && self.channel() == other.channel()
            && self.payload() == other.payload()
    }
}

impl Eq for RawNotification {}

impl std::fmt::Debug for RawNotification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The payload is the application's data: not shown.
        f.debug_struct("RawNotification")
            .field("process_id", &self.process_id)
            .field("channel", &self.channel())
            .finish_non_exhaustive()
    }
}

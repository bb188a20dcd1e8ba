//! The storage of the hub's batches: a [`Run`], the notifications of one
//! channel that the router read in one go, shared by every subscriber's
//! [`NotificationBatch`](crate::listen::NotificationBatch); and [`Spares`],
//! where a run's notifications go when the last batch of it is dropped, for
//! the router to fill in again instead of allocating.
//!
//! Each notification of a run is an `Arc<PgNotification>` (subscribers'
//! `next` hands it out shared) holding two `String`s: three allocations
//! and three frees per notification, which, made and freed a run at a time,
//! cost more than everything else the hub does with it. A spare notification
//! is filled in again only when no one else holds it (`Arc::get_mut`): one a
//! subscriber kept is left to that subscriber, and a fresh one takes its
//! place.
//!
//! Bounded: at most [`MAX_SPARES`] notifications and [`MAX_SPARE_RUNS`]
//! empty vectors wait, and a notification whose strings grew beyond
//! [`MAX_SPARE_TEXT`] bytes is freed rather than kept.

use std::sync::{Arc, Mutex};

use crate::listen::event::{PgNotification, RawNotification};

/// The most spare notifications kept: two reads' worth of the driver.
pub(crate) const MAX_SPARES: usize = 512;
/// The most empty run vectors kept.
pub(crate) const MAX_SPARE_RUNS: usize = 8;
/// A spare notification whose channel and payload capacity add up to more
/// than this is freed, so that spares stay small whatever was sent once.
pub(crate) const MAX_SPARE_TEXT: usize = 512;

/// The notifications of one channel read in one go, shared by every batch
/// made of them. Dropping the last reference gives them to its [`Spares`].
pub(crate) struct Run {
    notifications: Vec<Arc<PgNotification>>,
    spares: Option<Arc<Spares>>,
}

impl Run {
    /// A run that gives its notifications to `spares` (if any) when dropped.
    pub(crate) fn new(
        notifications: Vec<Arc<PgNotification>>,
        spares: Option<Arc<Spares>>,
    ) -> Self {
        Run {
            notifications,
            spares,
        }
    }

    #[inline]
    pub(crate) fn notifications(&self) -> &[Arc<PgNotification>] {
        &self.notifications
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(spares) = &self.spares {
            spares.give_back(std::mem::take(&mut self.notifications));
        }
    }
}

/// Notifications and run vectors no batch holds any more, kept for the
/// router. Its lock is the innermost (a run may be dropped under a queue's
/// or the routes' lock): nothing else is locked, and no other code runs,
/// while it is held.
#[derive(Default)]
pub(crate) struct Spares {
    state: Mutex<Kept>,
}

/// What [`Spares`] keeps; also what the router holds while it fills runs.
#[derive(Default)]
pub(crate) struct Kept {
    notifications: Vec<Arc<PgNotification>>,
    runs: Vec<Vec<Arc<PgNotification>>>,
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // Plain vectors, consistent between statements.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Everything kept, for the router to fill runs from; it hands back
    /// what it did not use with [`put_back`](Self::put_back).
    pub(crate) fn take(&self) -> Kept {
        std::mem::take(&mut *self.lock())
    }

    /// What [`take`](Self::take) gave and the router did not use.
    pub(crate) fn put_back(&self, kept: Kept) {
        let mut state = self.lock();
        if state.notifications.is_empty() && state.runs.is_empty() {
            *state = kept;
            return;
        }
        let Kept {
            mut notifications,
            runs,
        } = kept;
        let room = MAX_SPARES.saturating_sub(state.notifications.len());
        notifications.truncate(room);
        state.notifications.append(&mut notifications);
        let room = MAX_SPARE_RUNS.saturating_sub(state.runs.len());
        state.runs.extend(runs.into_iter().take(room));
    }

    /// A dropped run's notifications and vector.
    fn give_back(&self, mut run: Vec<Arc<PgNotification>>) {
        let mut state = self.lock();
        let room = MAX_SPARES.saturating_sub(state.notifications.len());
        // The small ones no one else holds, up to the bound; the others
        // are freed (or left to their holders) with `run`.
        // Only those no one else holds: one a subscriber kept is left to
        // it alone (its `Arc::try_unwrap` works, a handler takes it without
        // a copy, and the spares keep nothing alive for it).
        let reusable = |notification: &Arc<PgNotification>| {
            Arc::strong_count(notification) == 1
                && Arc::weak_count(notification) == 0
                && notification.channel.capacity() + notification.payload.capacity()
                    <= MAX_SPARE_TEXT
        };
        let mut kept = 0;
        for notification in run.drain(..) {
            if kept < room && reusable(&notification) {
                state.notifications.push(notification);
                kept += 1;
            }
        }
        if state.runs.len() < MAX_SPARE_RUNS {
            state.runs.push(run);
        }
    }
}

impl Kept {
    /// An empty vector for a run of about `len` notifications.
    pub(crate) fn run(&mut self, len: usize) -> Vec<Arc<PgNotification>> {
        match self.runs.pop() {
            Some(mut run) => {
                run.reserve(len);
                run
            }
            None => Vec::with_capacity(len),
        }
    }

    /// `raw` as a shared notification: a spare one filled in, if one is
    /// held by no one else; else a new one.
    #[inline]
    pub(crate) fn notification(&mut self, raw: &RawNotification) -> Arc<PgNotification> {
        while let Some(mut spare) = self.notifications.pop() {
            if let Some(notification) = Arc::get_mut(&mut spare) {
                raw.fill(notification);
                return spare;
            }
            // Someone kept it (a subscriber's `next`): it is theirs now.
        }
        Arc::new(raw.to_notification())
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.notifications.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn raw(payload: &str) -> RawNotification {
        RawNotification::from_parts(7, "c", payload, SystemTime::UNIX_EPOCH)
    }

    fn run_of(spares: &Arc<Spares>, payloads: &[&str]) -> Arc<Run> {
        let mut kept = spares.take();
        let mut notifications = kept.run(payloads.len());
        for payload in payloads {
            notifications.push(kept.notification(&raw(payload)));
        }
        spares.put_back(kept);
        Arc::new(Run::new(notifications, Some(spares.clone())))
    }

    #[test]
    fn a_dropped_run_is_filled_in_again_without_touching_what_a_subscriber_kept() {
        let spares = Arc::new(Spares::default());
        let first = run_of(&spares, &["1", "2", "3"]);
        let kept_by_subscriber = first.notifications()[1].clone();
        let first_addresses: Vec<*const PgNotification> =
            first.notifications().iter().map(Arc::as_ptr).collect();
        drop(first);
        let second = run_of(&spares, &["a", "b", "c"]);
        let payloads: Vec<&str> = second
            .notifications()
            .iter()
            .map(|n| n.payload.as_str())
            .collect();
        assert_eq!(payloads, ["a", "b", "c"]);
        assert_eq!(kept_by_subscriber.payload, "2", "a kept one is untouched");
        let refilled = second
            .notifications()
            .iter()
            .filter(|n| first_addresses.contains(&Arc::as_ptr(n)))
            .count();
        assert_eq!(refilled, 2, "the two no one held were filled in again");
        assert!(!second
            .notifications()
            .iter()
            .any(|n| Arc::ptr_eq(n, &kept_by_subscriber)));
    }

    #[test]
    fn spares_stay_bounded_and_keep_no_large_text() {
        let spares = Arc::new(Spares::default());
        let big = "x".repeat(MAX_SPARE_TEXT);
        let payloads: Vec<&str> = (0..MAX_SPARES + 100)
            .map(|i| if i % 2 == 0 { "small" } else { big.as_str() })
            .collect();
        for _ in 0..3 {
            drop(run_of(&spares, &payloads));
        }
        let kept = spares.take();
        assert!(kept.len() <= MAX_SPARES);
        assert!(kept
            .notifications
            .iter()
            .all(|n| n.channel.capacity() + n.payload.capacity() <= MAX_SPARE_TEXT));
        assert!(kept.runs.len() <= MAX_SPARE_RUNS);
    }
}

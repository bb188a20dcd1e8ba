//! What the driver and its front ends share: the commands a handle sends,
//! and the state both sides read ([`DriverShared`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

use crate::error::{OrmError, OrmResult};
use crate::listen::channel::quote_identifier;
use crate::listen::event::ListenerState;

/// A request from a front end.
pub(crate) enum Command {
    /// A change to the channels listened to, answered once the server has
    /// acknowledged it (at once while disconnected: the reconnect applies it).
    Channels(ChannelCommand, oneshot::Sender<OrmResult<()>>),
    /// Bring the server's LISTEN set in line with the wanted channels (sent
    /// by a hub when a channel's last subscription is dropped).
    Sync,
    /// `pg_listening_channels()` of the driver's own session.
    ServerChannels(oneshot::Sender<OrmResult<Vec<String>>>),
    Close(oneshot::Sender<OrmResult<()>>),
}

/// A change to the channels listened to.
pub(crate) enum ChannelCommand {
    /// `LISTEN`. With `remember`, the channel is also added to the wanted
    /// set (a listener); without, the caller manages that set (a hub).
    Listen {
        channel: String,
        remember: bool,
    },
    Unlisten(String),
    UnlistenAll,
}

impl ChannelCommand {
    /// Records the change in the wanted set. Returns the channel if this
    /// added it, so that a refused `LISTEN` can take it out again.
    pub(super) fn record(&self, wanted: &mut BTreeSet<String>) -> Option<String> {
        match self {
            ChannelCommand::Listen {
                channel,
                remember: true,
            } => wanted.insert(channel.clone()).then(|| channel.clone()),
            ChannelCommand::Listen { .. } => None,
            ChannelCommand::Unlisten(channel) => {
                wanted.remove(channel);
                None
            }
            ChannelCommand::UnlistenAll => {
                wanted.clear();
                None
            }
        }
    }

    /// Records the change in what `listening` says the session listens to
    /// and returns the statement that makes it. A `LISTEN` is sent even when
    /// already listening: its reply must wait for an acknowledgement, which
    /// an earlier `LISTEN` still in flight may not have had yet.
    pub(super) fn statement(self, listening: &mut BTreeSet<String>) -> String {
        match self {
            ChannelCommand::Listen { channel, .. } => {
                let sql = format!("LISTEN {}", quote_identifier(&channel));
                listening.insert(channel);
                sql
            }
            ChannelCommand::Unlisten(channel) => {
                let sql = format!("UNLISTEN {}", quote_identifier(&channel));
                listening.remove(&channel);
                sql
            }
            ChannelCommand::UnlistenAll => {
                listening.clear();
                "UNLISTEN *".to_string()
            }
        }
    }
}

/// What the driver and its front end share.
pub(crate) struct DriverShared {
    state: AtomicU8,
    pub(crate) reconnects: AtomicU64,
    /// The channels the listener should be listening to: kept across
    /// reconnects, changed at once by commands.
    channels: Mutex<BTreeSet<String>>,
    /// A [`Command::Sync`] could not be queued (the channel was full); the
    /// driver syncs after draining its commands.
    sync_requested: AtomicBool,
    /// The driver task ended without stopping (it panicked or was
    /// cancelled with its runtime).
    ended_abnormally: AtomicBool,
}

impl DriverShared {
    /// Connecting, wanting `channels`.
    pub(super) fn new(channels: impl IntoIterator<Item = String>) -> Self {
        DriverShared {
            state: AtomicU8::new(ListenerState::Connecting.to_u8()),
            reconnects: AtomicU64::new(0),
            channels: Mutex::new(channels.into_iter().collect()),
            sync_requested: AtomicBool::new(false),
            ended_abnormally: AtomicBool::new(false),
        }
    }

    /// Whether a hub asked for a sync that could not be queued (and clears
    /// the request).
    pub(super) fn take_sync_request(&self) -> bool {
        self.sync_requested.swap(false, Ordering::AcqRel)
    }

    /// The driver task ended without stopping: closed, and `close()` says so.
    pub(super) fn end_abnormally(&self) {
        self.ended_abnormally.store(true, Ordering::Release);
        self.set_state(ListenerState::Closed);
    }

    pub(crate) fn state(&self) -> ListenerState {
        ListenerState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(super) fn set_state(&self, state: ListenerState) {
        self.state.store(state.to_u8(), Ordering::Release);
    }

    pub(crate) fn channels(&self) -> Vec<String> {
        self.lock_channels().iter().cloned().collect()
    }

    /// Asks the driver to bring the server in line with the wanted channels
    /// (changed from outside the driver, by a hub), without waiting for it.
    /// It wakes the driver: call it with no lock held.
    pub(crate) fn request_sync(&self, commands: &mpsc::Sender<Command>) {
        // If the command channel is full, the flag is seen when the driver
        // drains it; the second try covers a driver that drained everything
        // between the first try and the flag.
        if let Err(mpsc::error::TrySendError::Full(_)) = commands.try_send(Command::Sync) {
            self.sync_requested.store(true, Ordering::Release);
            let _ = commands.try_send(Command::Sync);
        }
    }

    pub(crate) fn lock_channels(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why the driver is gone, for a `close()` that found it gone: an error
    /// if it ended abnormally, `Ok` if it stopped as it should (closed, or
    /// gave up reconnecting: the consumer was told why).
    pub(crate) fn end_result(&self) -> OrmResult<()> {
        if self.ended_abnormally.load(Ordering::Acquire) {
            return Err(ended_abnormally());
        }
        Ok(())
    }
}

/// The error of a driver task that ended without stopping.
pub(crate) fn ended_abnormally() -> OrmError {
    OrmError::closed(
        "the listener's background task ended abnormally (it panicked or its runtime shut down)",
    )
}

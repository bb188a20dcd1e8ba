//! The relay to NATS JetStream (feature `nats`): the events table as a
//! transactional outbox, its relay-lane events published to a JetStream
//! stream in commit order, each exactly once in the stream.
//!
//! # How it works
//!
//! - **Lane at insert.** [`Relay::start`] stores its rules (event-type
//!   patterns, as in [`Router`](crate::Router)) in the schema's
//!   `relay_rules` table. An event published while a rule matches its type is
//!   put in the relay lane; workers never claim it. Rules apply to events
//!   published after they are stored; earlier events stay with the workers.
//! - **No skipped event.** Ids are assigned at insert, not at commit, so a
//!   transaction can commit after a higher id was relayed. The relay keeps
//!   no cursor: a relay-lane row *is* the "not yet relayed" mark, and each
//!   round takes every committed one in id order. A late commit with a low
//!   id is simply taken in the next round; nothing waits for a transaction
//!   horizon, so a long transaction elsewhere in the cluster does not hold
//!   the relay back.
//! - **Exactly once in the stream.** Each event is published with the
//!   JetStream message id `<database>:<schema>:<event id>` (the database as
//!   the cluster's system identifier and the database's OID, so that
//!   databases relaying into one stream never share an id), pipelined (a whole batch of
//!   acks in flight), and the batch is marked relayed (deleted, or moved to
//!   `completed_events` under [`EventsConfig::keep_completed`](crate::EventsConfig::keep_completed))
//!   in one statement only after every ack arrived. A crash in between
//!   republishes the batch, and the stream's duplicate window drops the
//!   copies: keep that window longer than any outage you want covered
//!   ([`RelayConfig::duplicate_window`], two minutes by default).
//! - **One active relay per schema.** The active relay holds a session
//!   advisory lock on a connection of its own; standbys try to take it every
//!   half [`RelayConfig::takeover`]. A killed process closes its connection,
//!   so the lock is free at once; for a cut network the lock session sets
//!   the server's TCP keepalive and user timeout so the server ends it within
//!   about half the takeover time, and the active relay stops publishing when
//!   it cannot confirm its lock within a quarter of it.
//!
//! # Ordering
//!
//! - An event whose transaction committed before another event's
//!   transaction began is published first (it has the lower id, and it is
//!   visible whenever the later one is).
//! - The events of one transaction are published in publish (id) order.
//! - Per subject the same holds, since one relay publishes in one order.
//! - Events of concurrent transactions come in no particular order: each
//!   round publishes what has committed by then in id order, so a
//!   transaction that commits later is published later even if its ids
//!   are lower.
//! - After a failed publish (say, the NATS server restarted mid-batch) the
//!   batch is published again; messages of that batch that were stored
//!   before the failure keep their place, so the retried ones can land after
//!   later events of the same batch.
//! - Events of one schema go through one active relay; nothing orders
//!   events of different schemas.
//!
//! ```no_run
//! use pgorm::PgClient;
//! use pgorm_events::relay::{Relay, RelayConfig};
//! use pgorm_events::{Events, EventsConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = PgClient::connect("postgres://app@localhost/app").await?;
//! let events = Events::new(EventsConfig::new())?;
//! events.migrate(&client).await?;
//! let relay = Relay::start(
//!     client,
//!     events,
//!     RelayConfig::new("nats://127.0.0.1:4222").rule("order.**").stream("ORDERS"),
//! )
//! .await?;
//! // ... publish "order.created" events in your transactions ...
//! println!("{:?}", relay.stats());
//! relay.shutdown().await;
//! # Ok(()) }
//! ```

mod config;
mod rules;
mod run;
mod sql;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgorm::{GenericClient, PgClient};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::EventsError;
use crate::Events;

pub use config::RelayConfig;

/// What can go wrong in the relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A setting was rejected before anything was sent anywhere.
    #[error("invalid relay setting {setting}: {reason}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The events table could not be read or written.
    #[error(transparent)]
    Events(#[from] EventsError),
    /// NATS or JetStream refused or failed an operation.
    #[error("NATS {operation} failed: {message}")]
    Nats {
        /// What was being done.
        operation: &'static str,
        /// The client's error text.
        message: String,
    },
    /// The advisory lock's connection stopped answering: another relay may
    /// take over, so this one stopped publishing.
    #[error("the relay lock could not be confirmed; stepping down")]
    LockLost,
}

impl RelayError {
    fn nats(operation: &'static str, error: impl std::fmt::Display) -> RelayError {
        RelayError::Nats {
            operation,
            message: error.to_string(),
        }
    }
}

fn db(error: pgorm::OrmError) -> RelayError {
    RelayError::Events(EventsError::from(error))
}

/// Counters of one relay, read with [`Relay::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Whether this relay holds the lock and publishes now.
    pub active: bool,
    /// Events published, acknowledged and marked relayed by this relay.
    pub relayed: u64,
    /// Of those, how many JetStream reported as duplicates (already in the
    /// stream from an earlier attempt).
    pub duplicates: u64,
    /// Batches marked relayed.
    pub batches: u64,
    /// Times this relay took the lock.
    pub takeovers: u64,
    /// Failed rounds (publish, mark or lock errors), each retried.
    pub errors: u64,
    /// Events that matched a rule but cannot be published (a type that is
    /// no subject, from a rule written by hand, or a payload over the NATS
    /// server's `max_payload`), handed back to the workers with an error.
    pub rejected: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// How far the relay is behind, read from the table with [`relay_lag`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RelayLag {
    /// Relay-lane events not yet relayed (committed or not yet visible).
    pub events: i64,
    /// Age of the oldest of them (zero when there is none).
    pub oldest: Duration,
}

/// Reads the relay lag of `events`' tables.
///
/// # Errors
/// The server's errors.
pub async fn relay_lag<C: GenericClient + ?Sized>(
    client: &C,
    events: &Events,
) -> Result<RelayLag, RelayError> {
    let sql = sql::RelaySql::new(events.config().schema_name());
    let row = client.query_one(&sql.lag, &[]).await.map_err(db)?;
    let seconds: f64 = row.get(1);
    Ok(RelayLag {
        events: row.get(0),
        oldest: Duration::from_secs_f64(seconds.max(0.0)),
    })
}

/// Stores `rules` as the relay rules of `events`' tables, replacing the
/// rule set there. [`Relay::start`] does this; call it to set the lane
/// before any relay runs (events published before do not move lanes).
///
/// # Errors
/// [`RelayError::Setting`] for an invalid pattern; the server's errors.
pub async fn store_rules(
    client: &PgClient,
    events: &Events,
    rules: &[String],
) -> Result<(), RelayError> {
    let validated = rules
        .iter()
        .map(|pattern| rules::rule(pattern))
        .collect::<Result<Vec<_>, _>>()?;
    let patterns: Vec<&str> = validated.iter().map(|r| r.pattern.as_str()).collect();
    let regexes: Vec<&str> = validated.iter().map(|r| r.regex.as_str()).collect();
    let sql = sql::RelaySql::new(events.config().schema_name());
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(&sql.drop_other_rules, &[&patterns])
        .await
        .map_err(db)?;
    tx.execute(&sql.store_rules, &[&patterns, &regexes])
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(())
}

#[derive(Debug, Default)]
struct Shared {
    active: AtomicBool,
    relayed: AtomicU64,
    duplicates: AtomicU64,
    batches: AtomicU64,
    takeovers: AtomicU64,
    errors: AtomicU64,
    rejected: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn record_error(&self, error: &RelayError) {
        tracing::warn!(%error, "pgorm-events relay round failed; retrying");
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_string());
    }
}

/// A running relay: active when it holds the schema's relay lock, on
/// standby otherwise. Dropping it stops it (as [`shutdown`](Self::shutdown)
/// without waiting).
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    /// Validates `config`, stores its rules, connects to NATS (retrying in
    /// the background if it is not up yet) and starts relaying or waiting
    /// as a standby. `events` must be migrated.
    ///
    /// # Errors
    /// [`RelayError::Setting`] for an invalid setting; the server's errors
    /// storing the rules; [`RelayError::Nats`] for an unusable NATS URL.
    pub async fn start(
        client: PgClient,
        events: Events,
        config: RelayConfig,
    ) -> Result<Relay, RelayError> {
        config.validate()?;
        store_rules(&client, &events, &config.rules).await?;
        let nats = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(config.ack_timeout)
            .connect(config.nats_url.as_str())
            .await
            .map_err(|error| RelayError::nats("connect", error))?;
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let runner = run::Runner::new(client, events, config, nats, shared.clone(), stopped);
        let task = tokio::spawn(runner.run());
        Ok(Relay {
            shared,
            stop,
            task: Some(task),
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RelayStats {
        let s = &self.shared;
        RelayStats {
            active: s.active.load(Ordering::Acquire),
            relayed: s.relayed.load(Ordering::Acquire),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            takeovers: s.takeovers.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    /// Stops after the batch in flight (its acks awaited and marked, or
    /// left for the next relay), releases the lock and waits for the task.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

//! [`Events`]: the handle on one schema's event tables — migrate, publish,
//! claim and settle, inspect, and manage dead events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pgorm::GenericClient;

use crate::config::EventsConfig;
use crate::error::{EventsError, EventsResult};
use crate::event::{ClaimedEvent, DeadEvent, NewEvent};
use crate::sql::{Statements, LATEST_VERSION, MIGRATED_CONCURRENTLY, SCHEMA_TOO_NEW};
use crate::stats::{QueueStats, TypeQueueStats};

/// A key for the advisory lock that serialises migrations of any schema.
const MIGRATION_LOCK: i64 = 0x7067_6f72_6d65_7674; // "pgormevt"

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// The event was inserted with this id.
    Inserted {
        /// The new event's id.
        id: i64,
    },
    /// An event with the same idempotency key is live; nothing was inserted.
    Duplicate {
        /// The live event's id, when it was still there to be read (it may
        /// have finished in between).
        existing: Option<i64>,
    },
}

impl Published {
    /// The id of the inserted event, or of the live duplicate.
    pub fn id(&self) -> Option<i64> {
        match *self {
            Published::Inserted { id } => Some(id),
            Published::Duplicate { existing } => existing,
        }
    }

    /// Whether nothing was inserted because of the idempotency key.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Published::Duplicate { .. })
    }
}

/// What a batch publish did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchPublished {
    /// The ids of the inserted events.
    pub inserted: Vec<i64>,
    /// The idempotency keys that were skipped because an event with the key
    /// is live (or came earlier in the same batch), in input order.
    pub duplicate_keys: Vec<String>,
}

/// The handle on one schema's event tables. Cheap to clone.
///
/// Every method takes the client to run on: any [`GenericClient`], a
/// [`PgTransaction`](pgorm::PgTransaction) included, so publishing joins
/// the caller's transaction.
///
/// ```
/// use pgorm::PgClient;
/// use pgorm_events::{Events, EventsConfig, NewEvent};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = pgorm_testkit::TestServer::shared().create_database().await?;
/// let client = PgClient::connect(&url).await?;
/// let events = Events::new(EventsConfig::new())?;
/// events.migrate(&client).await?;
///
/// let tx = client.transaction().await?;
/// // ... the caller's own writes ...
/// events.publish(&tx, NewEvent::new("user.signed_up", &serde_json::json!({"user": 1}))?).await?;
/// tx.commit().await?; // the event exists if and only if this commits
///
/// assert_eq!(events.stats(&client).await?.due, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Events {
    config: Arc<EventsConfig>,
    pub(crate) sql: Arc<Statements>,
}

impl Events {
    /// A handle for the tables `config` names.
    ///
    /// # Errors
    /// [`EventsError::Setting`] for an invalid schema name.
    pub fn new(config: EventsConfig) -> EventsResult<Events> {
        config.validate()?;
        let sql = Statements::new(config.schema_name(), &config.wakeup_channel());
        Ok(Events {
            config: Arc::new(config),
            sql: Arc::new(sql),
        })
    }

    /// The settings.
    pub fn config(&self) -> &EventsConfig {
        &self.config
    }

    /// Creates or upgrades the schema: every shipped migration newer than
    /// the database's version is applied in order, under an advisory lock,
    /// in one statement (a `DO` block), so it is atomic on any
    /// [`GenericClient`]: a [`PgClient`](pgorm::PgClient) (its own transaction) or a
    /// [`PgTransaction`](pgorm::PgTransaction) (the caller's, committed or
    /// rolled back with the rest of it). Concurrent calls (two processes
    /// starting at once) are safe and a second call does nothing. Under
    /// REPEATABLE READ or SERIALIZABLE, a call that had to wait for another
    /// one needs a new snapshot: on a plain client it is retried here; in
    /// the caller's transaction it fails with a serialization failure
    /// (SQLSTATE 40001) for the caller to retry the transaction. Returns
    /// the version now in place.
    ///
    /// # Errors
    /// The server's errors; [`EventsError::SchemaTooNew`] when the database
    /// was migrated by a newer release.
    pub async fn migrate<C: GenericClient + ?Sized>(&self, client: &C) -> EventsResult<i32> {
        let block = self.sql.migrate_block(MIGRATION_LOCK);
        let mut result = client.execute(&block, &[]).await;
        // Under REPEATABLE READ or SERIALIZABLE a migrate that waited for
        // another one must start again with a new snapshot. On a plain client
        // (one statement, one transaction) that is a retry; in the caller's
        // transaction the retry fails (the transaction is aborted), and the
        // caller gets the serialization failure to retry as usual.
        for _ in 0..3 {
            let concurrent = matches!(&result, Err(error)
                if error.db_error().is_some_and(|db| db.message() == MIGRATED_CONCURRENTLY));
            if !concurrent {
                break;
            }
            match client.execute(&block, &[]).await {
                Ok(rows) => result = Ok(rows),
                Err(error)
                    if error
                        .db_error()
                        .is_some_and(|db| db.message() == MIGRATED_CONCURRENTLY) =>
                {
                    result = Err(error)
                }
                Err(_) => break,
            }
        }
        if let Err(error) = result {
            let too_new = error
                .db_error()
                .filter(|db| db.message() == SCHEMA_TOO_NEW)
                .and_then(|db| db.detail()?.parse().ok());
            return Err(match too_new {
                Some(found) => EventsError::SchemaTooNew {
                    found,
                    known: LATEST_VERSION,
                },
                None => error.into(),
            });
        }
        tracing::info!(
            schema = %self.config.schema_name(),
            version = LATEST_VERSION,
            "pgorm-events schema migrated"
        );
        Ok(LATEST_VERSION)
    }

    /// Inserts one event through `client`, in its transaction if it is one
    /// (nothing is committed here). Workers are woken when it commits.
    ///
    /// # Errors
    /// [`EventsError::Setting`] for an invalid event; the server's errors.
    pub async fn publish<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        event: NewEvent,
    ) -> EventsResult<Published> {
        event.validate()?;
        let delay = event.delay_secs();
        let params: [&(dyn pgorm::ToSql + Sync); 7] = [
            &event.event_type,
            &event.payload,
            &event.priority,
            &event.run_at,
            &delay,
            &event.max_attempts,
            &event.idempotency_key,
        ];
        if event.idempotency_key.is_none() {
            // The keyless insert takes every parameter but the key.
            let row = client
                .query_one(&self.sql.publish_keyless, &params[..6])
                .await?;
            return Ok(Published::Inserted { id: row.get(0) });
        }
        let row = client.query_opt(&self.sql.publish, &params).await?;
        if let Some(row) = row {
            return Ok(Published::Inserted { id: row.get(0) });
        }
        let existing = client
            .query_opt(&self.sql.existing_key, &[&event.idempotency_key])
            .await?
            .map(|row| row.get(0));
        Ok(Published::Duplicate { existing })
    }

    /// Inserts many events in one statement (one round trip), in the
    /// caller's transaction if `client` is one.
    ///
    /// # Errors
    /// As [`publish`](Self::publish); an invalid event rejects the whole
    /// batch before anything is sent.
    pub async fn publish_batch<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        events: Vec<NewEvent>,
    ) -> EventsResult<BatchPublished> {
        if events.is_empty() {
            return Ok(BatchPublished::default());
        }
        let mut types = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        let mut priorities = Vec::with_capacity(events.len());
        let mut run_ats = Vec::with_capacity(events.len());
        let mut delays = Vec::with_capacity(events.len());
        let mut max_attempts = Vec::with_capacity(events.len());
        let mut keys = Vec::with_capacity(events.len());
        for event in &events {
            event.validate()?;
            types.push(event.event_type.as_str());
            payloads.push(event.payload.as_str());
            priorities.push(event.priority);
            run_ats.push(event.run_at);
            delays.push(event.delay_secs());
            max_attempts.push(event.max_attempts);
            keys.push(event.idempotency_key.as_deref());
        }
        let mut params: Vec<&(dyn pgorm::ToSql + Sync)> = vec![
            &types,
            &payloads,
            &priorities,
            &run_ats,
            &delays,
            &max_attempts,
        ];
        if keys.iter().all(Option::is_none) {
            let rows = client
                .query(&self.sql.publish_batch_keyless, &params)
                .await?;
            return Ok(BatchPublished {
                inserted: rows.iter().map(|row| row.get::<_, i64>(0)).collect(),
                duplicate_keys: Vec::new(),
            });
        }
        params.push(&keys);
        let rows = client.query(&self.sql.publish_batch, &params).await?;
        let mut inserted = Vec::with_capacity(rows.len());
        let mut inserted_keys: HashMap<String, usize> = HashMap::new();
        for row in &rows {
            inserted.push(row.get::<_, i64>(0));
            if let Some(key) = row.get::<_, Option<String>>(1) {
                *inserted_keys.entry(key).or_default() += 1;
            }
        }
        let mut duplicate_keys = Vec::new();
        for key in keys.into_iter().flatten() {
            match inserted_keys.get_mut(key) {
                Some(count) if *count > 0 => *count -= 1,
                _ => duplicate_keys.push(key.to_owned()),
            }
        }
        Ok(BatchPublished {
            inserted,
            duplicate_keys,
        })
    }

    /// Claims up to `limit` due events (and events whose lease expired)
    /// with `FOR UPDATE SKIP LOCKED`, each under a new lease of `lease`.
    /// Each claim counts as an attempt. An event whose payload cannot be
    /// decoded is moved to dead events at once (with the decoder's error)
    /// instead of being returned. [`EventWorkers`](crate::EventWorkers)
    /// does this for you; call it directly to run events your own way.
    ///
    /// # Errors
    /// The server's errors.
    pub async fn claim<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        limit: usize,
        lease: Duration,
    ) -> EventsResult<Vec<ClaimedEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&self.sql.claim, &[&limit, &lease.as_secs_f64()])
            .await?;
        self.decode_claimed(client, rows).await
    }

    /// As [`claim`](Self::claim) for due events after `cursor` in claim
    /// order only (no rescue of expired leases).
    pub(crate) async fn claim_from<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        limit: usize,
        lease: Duration,
        cursor: ClaimCursor,
    ) -> EventsResult<Vec<ClaimedEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &self.sql.claim_from,
                &[
                    &limit,
                    &lease.as_secs_f64(),
                    &cursor.priority,
                    &cursor.run_at,
                    &cursor.id,
                ],
            )
            .await?;
        self.decode_claimed(client, rows).await
    }

    /// Completes `leases` and claims up to `limit` events in one statement
    /// (one transaction): from `cursor` as [`claim_from`](Self::claim_from),
    /// otherwise as [`claim`](Self::claim). Once the statement has run,
    /// returns the leases whose completion was accepted (committed) and
    /// the claimed events, or the error of decoding them (an undecodable
    /// payload whose move to dead events failed).
    pub(crate) async fn claim_completing<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        leases: &[(i64, i64)],
        limit: usize,
        lease: Duration,
        cursor: Option<ClaimCursor>,
    ) -> EventsResult<(Vec<(i64, i64)>, EventsResult<Vec<ClaimedEvent>>)> {
        let ids: Vec<i64> = leases.iter().map(|(id, _)| *id).collect();
        let tokens: Vec<i64> = leases.iter().map(|(_, token)| *token).collect();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let seconds = lease.as_secs_f64();
        let statements = if self.config.completed_retention().is_some() {
            &self.sql.claim_completing_keep
        } else {
            &self.sql.claim_completing
        };
        let rows = match cursor {
            None => {
                client
                    .query(&statements[0], &[&ids, &tokens, &limit, &seconds])
                    .await?
            }
            Some(cursor) => {
                client
                    .query(
                        &statements[1],
                        &[
                            &ids,
                            &tokens,
                            &limit,
                            &seconds,
                            &cursor.priority,
                            &cursor.run_at,
                            &cursor.id,
                        ],
                    )
                    .await?
            }
        };
        let (completed, claimed): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|row| row.get::<_, Option<&str>>(1).is_none());
        // The completions are committed with the statement: they are
        // reported accepted whatever happens to the claimed rows next.
        let accepted = completed
            .iter()
            .map(|row| (row.get(0), row.get(9)))
            .collect();
        Ok((accepted, self.decode_claimed(client, claimed).await))
    }

    async fn decode_claimed<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        rows: Vec<pgorm::Row>,
    ) -> EventsResult<Vec<ClaimedEvent>> {
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            match ClaimedEvent::from_row(row) {
                Ok(event) => claimed.push(event),
                Err(error) => {
                    // A payload serde_json cannot read (say, a number beyond
                    // f64) would fail every claim forever: it goes dead at
                    // once instead, visible with its error.
                    let id: i64 = row.get(0);
                    let token: i64 = row.get(9);
                    let error = format!("the payload could not be decoded: {error}");
                    tracing::warn!(id, %error, "event moved to dead events");
                    client
                        .execute(&self.sql.bury, &[&id, &token, &error])
                        .await?;
                }
            }
        }
        Ok(claimed)
    }

    /// Marks a claimed event done (deleted, or moved to `completed_events`
    /// with [`EventsConfig::keep_completed`]), in `client`'s transaction if
    /// it is one.
    ///
    /// # Errors
    /// [`EventsError::LeaseLost`] when the lease is no longer the event's
    /// (it expired and the event was taken again, or already settled):
    /// nothing was changed. The server's errors.
    pub async fn complete<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        claimed: &ClaimedEvent,
    ) -> EventsResult<()> {
        let sql = if self.config.completed_retention().is_some() {
            &self.sql.complete_keep
        } else {
            &self.sql.complete_delete
        };
        let changed = client
            .execute(sql, &[&claimed.event.id, &claimed.lease_token])
            .await?;
        if changed == 0 {
            return Err(EventsError::LeaseLost {
                id: claimed.event.id,
            });
        }
        Ok(())
    }

    /// Completes many claimed events in one statement; returns the ids
    /// whose lease still held (the others were not changed).
    ///
    /// # Errors
    /// The server's errors.
    pub async fn complete_many<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        claimed: &[ClaimedEvent],
    ) -> EventsResult<Vec<i64>> {
        let leases: Vec<(i64, i64)> = claimed
            .iter()
            .map(|c| (c.event.id, c.lease_token))
            .collect();
        let accepted = self.complete_leases(client, &leases).await?;
        Ok(accepted.into_iter().map(|(id, _)| id).collect())
    }

    /// Completes events by `(id, lease token)`; returns the leases accepted.
    pub(crate) async fn complete_leases<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        leases: &[(i64, i64)],
    ) -> EventsResult<Vec<(i64, i64)>> {
        let ids: Vec<i64> = leases.iter().map(|(id, _)| *id).collect();
        let tokens: Vec<i64> = leases.iter().map(|(_, token)| *token).collect();
        let sql = if self.config.completed_retention().is_some() {
            &self.sql.complete_keep_in
        } else {
            &self.sql.complete_delete_in
        };
        let rows = client.query(sql, &[&ids, &tokens]).await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Records a failed attempt: the event is retried after `retry_in`, or,
    /// if this was its last attempt, moved to `dead_events` with `error`
    /// kept, in one statement. Returns whether it is now dead.
    ///
    /// # Errors
    /// [`EventsError::LeaseLost`] as for [`complete`](Self::complete); the
    /// server's errors.
    pub async fn fail<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        claimed: &ClaimedEvent,
        error: &str,
        retry_in: Duration,
    ) -> EventsResult<bool> {
        let event = &claimed.event;
        let dead = event.attempt >= event.max_attempts;
        let changed = if dead {
            client
                .execute(&self.sql.bury, &[&event.id, &claimed.lease_token, &error])
                .await?
        } else {
            client
                .execute(
                    &self.sql.retry,
                    &[
                        &event.id,
                        &claimed.lease_token,
                        &error,
                        &retry_in.as_secs_f64(),
                    ],
                )
                .await?
        };
        if changed == 0 {
            return Err(EventsError::LeaseLost { id: event.id });
        }
        Ok(dead)
    }

    /// Gives claimed events back at once, as if never claimed (the attempt
    /// is not counted), and wakes workers. Returns how many were released
    /// (events whose lease was lost are not).
    ///
    /// # Errors
    /// The server's errors.
    pub async fn release<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        leases: &[(i64, i64)],
    ) -> EventsResult<u64> {
        if leases.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = leases.iter().map(|(id, _)| *id).collect();
        let tokens: Vec<i64> = leases.iter().map(|(_, token)| *token).collect();
        let released = client.execute(&self.sql.release, &[&ids, &tokens]).await?;
        if released > 0 {
            client.execute(&self.sql.wake, &[]).await?;
        }
        Ok(released)
    }

    /// Extends leases by `lease` from now; returns the ids still held.
    pub(crate) async fn renew<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        leases: &[(i64, i64)],
        lease: Duration,
    ) -> EventsResult<Vec<i64>> {
        let ids: Vec<i64> = leases.iter().map(|(id, _)| *id).collect();
        let tokens: Vec<i64> = leases.iter().map(|(_, token)| *token).collect();
        let rows = client
            .query(&self.sql.renew, &[&ids, &tokens, &lease.as_secs_f64()])
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// How long until the next delayed event is due or the next lease
    /// expires (zero if one is already due); `None` when neither exists.
    pub(crate) async fn next_due<C: GenericClient + ?Sized>(
        &self,
        client: &C,
    ) -> EventsResult<Option<Duration>> {
        let row = client.query_one(&self.sql.next_due, &[]).await?;
        let seconds: Option<f64> = row.get(0);
        Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// As `next_due` for pending events after `cursor`'s time only (no
    /// lease expiry: sweeps rescue those).
    pub(crate) async fn next_due_from<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        cursor: ClaimCursor,
    ) -> EventsResult<Option<Duration>> {
        let row = client
            .query_one(&self.sql.next_due_from, &[&cursor.run_at])
            .await?;
        let seconds: Option<f64> = row.get(0);
        Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// Queue depth by state and type, oldest due age and dead counts. Reads
    /// the whole queue table: meant for monitoring, not for every request.
    ///
    /// # Errors
    /// The server's errors.
    pub async fn stats<C: GenericClient + ?Sized>(&self, client: &C) -> EventsResult<QueueStats> {
        let mut stats = QueueStats::default();
        let mut by_type: HashMap<String, TypeQueueStats> = HashMap::new();
        for row in client.query(&self.sql.stats_queue, &[]).await? {
            let entry = by_type.entry(row.get(0)).or_default();
            entry.due = row.get::<_, i64>(1) as u64;
            entry.delayed = row.get::<_, i64>(2) as u64;
            entry.running = row.get::<_, i64>(3) as u64;
            entry.expired_leases = row.get::<_, i64>(4) as u64;
            entry.oldest_due_age = row
                .get::<_, Option<f64>>(5)
                .map(|s| Duration::from_secs_f64(s.max(0.0)));
        }
        for row in client.query(&self.sql.stats_dead, &[]).await? {
            by_type.entry(row.get(0)).or_default().dead = row.get::<_, i64>(1) as u64;
        }
        for entry in by_type.values() {
            stats.due += entry.due;
            stats.delayed += entry.delayed;
            stats.running += entry.running;
            stats.expired_leases += entry.expired_leases;
            stats.dead += entry.dead;
            stats.oldest_due_age = stats.oldest_due_age.max(entry.oldest_due_age);
        }
        stats.depth = stats.due + stats.delayed + stats.running + stats.expired_leases;
        stats.by_type = by_type;
        Ok(stats)
    }

    /// Up to `limit` dead events with an id above `after` (0 for the
    /// first page), by id.
    ///
    /// # Errors
    /// The server's errors.
    pub async fn list_dead<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        after: i64,
        limit: usize,
    ) -> EventsResult<Vec<DeadEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client.query(&self.sql.list_dead, &[&after, &limit]).await?;
        rows.iter()
            .map(|row| {
                let payload: String = row.get(2);
                Ok(DeadEvent {
                    id: row.get(0),
                    event_type: row.get(1),
                    payload: serde_json::from_str(&payload)
                        .unwrap_or(serde_json::Value::String(payload)),
                    attempts: row.get(3),
                    max_attempts: row.get(4),
                    last_error: row.get(5),
                    idempotency_key: row.get(6),
                    created_at: row.get(7),
                    died_at: row.get(8),
                })
            })
            .collect()
    }

    /// Moves dead events back into the queue, due now, with their attempts
    /// reset (the last error is kept until the next attempt). Returns how
    /// many moved.
    ///
    /// # Errors
    /// The server's errors, for instance a unique violation when a live
    /// event already holds one's idempotency key (then nothing moves).
    pub async fn requeue_dead<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        ids: &[i64],
    ) -> EventsResult<u64> {
        Ok(client.execute(&self.sql.requeue_dead, &[&ids]).await?)
    }

    /// Deletes dead events for good. Returns how many.
    ///
    /// # Errors
    /// The server's errors.
    pub async fn purge_dead<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        ids: &[i64],
    ) -> EventsResult<u64> {
        Ok(client.execute(&self.sql.purge_dead, &[&ids]).await?)
    }

    /// Deletes completed events older than the retention, in batches of
    /// `batch` rows (one statement each), until none is left. Returns how
    /// many. Does nothing without [`EventsConfig::keep_completed`].
    ///
    /// # Errors
    /// The server's errors.
    pub async fn prune_completed<C: GenericClient + ?Sized>(
        &self,
        client: &C,
        batch: usize,
    ) -> EventsResult<u64> {
        let Some(retention) = self.config.completed_retention() else {
            return Ok(0);
        };
        let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let deleted = client
                .execute(
                    &self.sql.prune_completed,
                    &[&retention.as_secs_f64(), &batch],
                )
                .await?;
            total += deleted;
            if deleted < batch as u64 {
                return Ok(total);
            }
        }
    }

    /// The server's time now (for tests and tools comparing with
    /// [`Event::run_at`](crate::Event::run_at)).
    ///
    /// # Errors
    /// The server's errors.
    pub async fn server_now<C: GenericClient + ?Sized>(
        &self,
        client: &C,
    ) -> EventsResult<SystemTime> {
        Ok(client
            .query_one("SELECT clock_timestamp()", &[])
            .await?
            .get(0))
    }
}

/// A key in claim order (priority, run_at, id): claims after it start there
/// in the due index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ClaimCursor {
    pub priority: i16,
    pub run_at: SystemTime,
    pub id: i64,
}

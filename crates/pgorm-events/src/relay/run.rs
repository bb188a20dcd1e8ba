//! The relay's task: wait for the lock as a standby, then relay batches
//! while it holds the lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::Publish, stream};
use pgorm::deadpool_postgres::{ClientWrapper, Object};
use pgorm::tokio_postgres::Client as tokio_postgres_client;
use pgorm::{GenericClient, PgClient};
use tokio::sync::watch;

use super::sql::RelaySql;
use super::{db, RelayConfig, RelayError, Shared};
use crate::Events;

/// The longest pause between failed rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(super) struct Runner {
    client: PgClient,
    schema: String,
    keep: bool,
    sql: RelaySql,
    config: RelayConfig,
    jetstream: jetstream::Context,
    nats: async_nats::Client,
    /// The events' database (see `RelaySql::source`), read once it is
    /// reachable: part of every message id.
    source: Option<String>,
    shared: Arc<Shared>,
    stopped: watch::Receiver<bool>,
}

/// One relay-lane row.
struct Pending {
    id: i64,
    event_type: String,
    payload: String,
}

impl Runner {
    pub(super) fn new(
        client: PgClient,
        events: Events,
        config: RelayConfig,
        nats: async_nats::Client,
        shared: Arc<Shared>,
        stopped: watch::Receiver<bool>,
    ) -> Runner {
        let mut jetstream = jetstream::new(nats.clone());
        jetstream.set_timeout(config.ack_timeout);
        let schema = events.config().schema_name().to_owned();
        Runner {
            client,
            sql: RelaySql::new(&schema),
            keep: events.config().completed_retention().is_some(),
            schema,
            config,
            jetstream,
            nats,
            source: None,
            shared,
            stopped,
        }
    }

    fn stopping(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Sleeps for `duration` or until asked to stop.
    async fn pause(&mut self, duration: Duration) {
        let mut stopped = self.stopped.clone();
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = stopped.wait_for(|stop| *stop) => {}
        }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        let mut stream_ready = false;
        while !self.stopping() {
            if !stream_ready {
                match self.ensure_stream().await {
                    Ok(()) => stream_ready = true,
                    Err(error) => {
                        self.shared.record_error(&error);
                        self.pause(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let lock = match self.acquire().await {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    self.pause(self.config.takeover / 2).await;
                    continue;
                }
                Err(error) => {
                    self.shared.record_error(&error);
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            tracing::info!(schema = %self.schema, "pgorm-events relay is active");
            self.shared.takeovers.fetch_add(1, Ordering::Relaxed);
            self.shared.active.store(true, Ordering::Release);
            let result = self.lead(&lock, &mut backoff).await;
            self.shared.active.store(false, Ordering::Release);
            // Closing the lock's connection releases the lock.
            drop(lock);
            if let Err(error) = result {
                self.shared.record_error(&error);
                self.pause(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    async fn ensure_stream(&self) -> Result<(), RelayError> {
        if self.config.create_stream {
            self.jetstream
                .get_or_create_stream(stream::Config {
                    name: self.config.stream.clone(),
                    subjects: vec![format!("{}.>", self.config.subject_prefix)],
                    duplicate_window: self.config.duplicate_window,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|error| RelayError::nats("stream creation", error))?;
        } else {
            self.jetstream
                .get_stream(&self.config.stream)
                .await
                .map_err(|error| RelayError::nats("stream lookup", error))?;
        }
        Ok(())
    }

    /// Takes the schema's relay lock on a connection of its own (taken out
    /// of the pool, so it closes when dropped). `None`: another relay has it.
    async fn acquire(&self) -> Result<Option<ClientWrapper>, RelayError> {
        let connection = self.client.connection().await.map_err(db)?;
        let connection = Object::take(connection);
        let takeover = self.config.takeover;
        let idle = (takeover / 5).as_secs().max(1).to_string();
        let interval = (takeover / 10).as_secs().max(1).to_string();
        let user_timeout = (takeover / 2).as_millis().max(1000).to_string();
        let session: &tokio_postgres_client = &connection;
        GenericClient::execute(
            session,
            &self.sql.keepalive,
            &[&idle, &interval, &user_timeout],
        )
        .await
        .map_err(db)?;
        let key = format!("pgorm-events relay {}", self.schema);
        let row = GenericClient::query_one(session, &self.sql.try_lock, &[&key])
            .await
            .map_err(db)?;
        Ok(row.get::<_, bool>(0).then_some(connection))
    }

    /// Relays while the lock is held. `Ok` when asked to stop.
    async fn lead(
        &mut self,
        lock: &ClientWrapper,
        backoff: &mut Duration,
    ) -> Result<(), RelayError> {
        let check_every = self.config.takeover / 4;
        let mut checked = Instant::now();
        let limit = i64::try_from(self.config.batch_size).unwrap_or(i64::MAX);
        if self.source.is_none() {
            let row = self
                .client
                .query_one(&self.sql.source, &[])
                .await
                .map_err(db)?;
            self.source = Some(row.get(0));
        }
        while !self.stopping() {
            if checked.elapsed() >= check_every {
                match tokio::time::timeout(check_every, lock.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => checked = Instant::now(),
                    _ => return Err(RelayError::LockLost),
                }
            }
            let rows = self
                .client
                .query(&self.sql.fetch, &[&limit])
                .await
                .map_err(db)?;
            if rows.is_empty() {
                let poll = self.config.poll_interval;
                self.pause(poll).await;
                continue;
            }
            let batch: Vec<Pending> = rows
                .iter()
                .map(|row| Pending {
                    id: row.get(0),
                    event_type: row.get(1),
                    payload: row.get(2),
                })
                .collect();
            let ids = self.publish(&batch).await?;
            let marked = if self.keep {
                self.client.execute(&self.sql.mark_keep, &[&ids]).await
            } else {
                self.client.execute(&self.sql.mark_delete, &[&ids]).await
            }
            .map_err(db)?;
            self.shared.relayed.fetch_add(marked, Ordering::AcqRel);
            self.shared.batches.fetch_add(1, Ordering::Relaxed);
            *backoff = Duration::from_millis(50);
        }
        Ok(())
    }

    /// Publishes a batch with every ack in flight at once, then waits for
    /// all of them. Returns the ids to mark relayed.
    async fn publish(&self, batch: &[Pending]) -> Result<Vec<i64>, RelayError> {
        let mut acks = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        // The server refuses (and drops the connection for) a message over
        // its max_payload; 0 while the size is not known yet.
        let max_payload = self.nats.server_info().max_payload;
        for event in batch {
            // Only a hand-written rule lets a type that is no subject into
            // the lane; a payload too big for the server would fail every
            // round and hold up every later event. Either goes back to the
            // workers, visible with the reason.
            let size = event.payload.len() + event.event_type.len() + self.schema.len() + 256;
            let reason = if !is_subject_tail(&event.event_type) {
                Some("the relay cannot publish this event type as a NATS subject")
            } else if max_payload > 0 && size > max_payload {
                Some("the payload is larger than the NATS server's max_payload")
            } else {
                None
            };
            if let Some(reason) = reason {
                self.client
                    .execute(&self.sql.unlane, &[&event.id, &reason])
                    .await
                    .map_err(db)?;
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(id = event.id, reason, "event left to the workers");
                continue;
            }
            let message = Publish::build()
                .payload(event.payload.clone().into_bytes().into())
                .message_id(format!(
                    "{}:{}:{}",
                    self.source.as_deref().unwrap_or_default(),
                    self.schema,
                    event.id
                ))
                .header("Pgorm-Event-Id", event.id.to_string().as_str())
                .header("Pgorm-Event-Type", event.event_type.as_str());
            let ack = self
                .jetstream
                .send_publish(self.config.subject_of(&event.event_type), message)
                .await
                .map_err(|error| RelayError::nats("publish", error))?;
            acks.push(ack);
            ids.push(event.id);
        }
        let mut duplicates = 0;
        for ack in acks {
            let ack = ack
                .await
                .map_err(|error| RelayError::nats("publish acknowledgement", error))?;
            if ack.duplicate {
                duplicates += 1;
            }
        }
        self.shared
            .duplicates
            .fetch_add(duplicates, Ordering::Relaxed);
        Ok(ids)
    }
}

/// Whether `event_type` can follow the prefix in a subject.
fn is_subject_tail(event_type: &str) -> bool {
    event_type.split('.').all(|token| {
        !token.is_empty()
            && token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

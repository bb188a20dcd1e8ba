//! [`ChangeFeed`]: a hub subscription turned into typed changes of a model.

use std::collections::{HashMap, VecDeque};

use super::install::{channel_name, notifies_current_channel, resolve_table};
use super::Change;
use crate::error::{OrmResult, ValidationError};
use crate::listen::{
    ListenerEvent, NotificationBatch, PgNotifyHub, QueuePolicy, Subscription, SubscriptionStats,
};
use crate::model::{qualified_table, quote_identifier, Model};
use crate::GenericClient;

/// The typed changes of one table, read from a [`PgNotifyHub`]
/// subscription to the channel its [`install`](super::install)ed triggers
/// notify on.
///
/// Each batch of notifications the hub delivers becomes one query through
/// `client` that reads the current rows of every key it names: a key whose
/// row is there comes out as [`Change::Inserted`] or [`Change::Updated`]
/// with that row, a key whose row is gone as [`Change::Deleted`]. Batches
/// are handled in order, so the changes of one row never arrive out of
/// order and the last one tells the row's state. A reconnect of the hub, a
/// queue overflow, a TRUNCATE, an unreadable payload or a batch that could
/// not be fetched each yield [`Change::Resync`]: reload from the table.
pub struct ChangeFeed<M: Model, C> {
    subscription: Subscription,
    client: C,
    fetch_sql: String,
    ready: VecDeque<Change<M>>,
    resync_owed: bool,
}

impl<M: Model, C> std::fmt::Debug for ChangeFeed<M, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("table", &M::TABLE)
            .field("channel", &self.subscription.channel())
            .field("ready", &self.ready.len())
            .field("resync_owed", &self.resync_owed)
            .finish_non_exhaustive()
    }
}

impl<M: Model, C: GenericClient> ChangeFeed<M, C> {
    /// Subscribes to `M`'s table through `hub` with the hub's default queue;
    /// `client` (a [`PgClient`](crate::PgClient) or any
    /// [`GenericClient`]) fetches the rows. Changes committed after this
    /// returns are delivered.
    ///
    /// # Errors
    /// [`OrmError::Query`](crate::OrmError::Query) when the table does not
    /// exist; [`OrmError::Validation`](crate::OrmError::Validation) when
    /// no feed is installed on it as it is now named (never installed, or
    /// the table renamed or moved since: the triggers would notify another
    /// channel); the errors of
    /// [`PgNotifyHub::subscribe`].
    pub async fn subscribe(hub: &PgNotifyHub, client: C) -> OrmResult<Self> {
        let (schema, table) = resolve_table::<M>(&client).await?;
        check_installed::<M>(&client).await?;
        let fetch_sql = fetch_sql::<M>(&key_types::<M>(&client).await?)?;
        let subscription = hub.subscribe(&channel_name(&schema, &table)).await?;
        Ok(Self::with_subscription(subscription, client, fetch_sql))
    }

    /// As [`subscribe`](Self::subscribe), with the subscription's own queue
    /// capacity (in notifications) and policy.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe) and [`PgNotifyHub::subscribe_with`].
    pub async fn subscribe_with(
        hub: &PgNotifyHub,
        client: C,
        capacity: usize,
        policy: QueuePolicy,
    ) -> OrmResult<Self> {
        let (schema, table) = resolve_table::<M>(&client).await?;
        check_installed::<M>(&client).await?;
        let fetch_sql = fetch_sql::<M>(&key_types::<M>(&client).await?)?;
        let subscription = hub
            .subscribe_with(&channel_name(&schema, &table), capacity, policy)
            .await?;
        Ok(Self::with_subscription(subscription, client, fetch_sql))
    }

    fn with_subscription(subscription: Subscription, client: C, fetch_sql: String) -> Self {
        ChangeFeed {
            subscription,
            client,
            fetch_sql,
            ready: VecDeque::new(),
            resync_owed: false,
        }
    }

    /// The channel the feed listens to.
    pub fn channel(&self) -> &str {
        self.subscription.channel()
    }

    /// The underlying subscription's counters (notifications, not rows).
    pub fn stats(&self) -> SubscriptionStats {
        self.subscription.stats()
    }

    /// The next change; `None` once the hub has stopped.
    ///
    /// # Errors
    /// The error of the fetch (the next call then yields
    /// [`Change::Resync`]) or of the hub.
    ///
    /// # Cancel safety
    /// Cancel safe in the sense that nothing is lost silently: cancelled
    /// while fetching, the feed yields [`Change::Resync`] next.
    pub async fn next(&mut self) -> Option<OrmResult<Change<M>>> {
        loop {
            if let Some(change) = self.ready.pop_front() {
                return Some(Ok(change));
            }
            match self.next_batch().await? {
                Ok(changes) => self.ready.extend(changes),
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// The changes of the next batch of notifications (never empty), or one
    /// [`Change::Resync`]; `None` once the hub has stopped. Cheaper than
    /// [`next`](Self::next) per change.
    ///
    /// # Errors
    /// As [`next`](Self::next).
    ///
    /// # Cancel safety
    /// As [`next`](Self::next).
    pub async fn next_batch(&mut self) -> Option<OrmResult<Vec<Change<M>>>> {
        if !self.ready.is_empty() {
            return Some(Ok(self.ready.drain(..).collect()));
        }
        loop {
            if self.resync_owed {
                self.resync_owed = false;
                return Some(Ok(vec![Change::Resync]));
            }
            let batch = match self.subscription.next_batch().await? {
                Ok(ListenerEvent::Notification(batch)) => batch,
                Ok(ListenerEvent::Reconnected { .. } | ListenerEvent::Lagged { .. }) => {
                    return Some(Ok(vec![Change::Resync]));
                }
                Err(error) => return Some(Err(error)),
            };
            let Some(keys) = collect_keys(&batch) else {
                // A TRUNCATE, or a payload that is not the trigger's:
                // which rows changed is unknown.
                return Some(Ok(vec![Change::Resync]));
            };
            if keys.is_empty() {
                continue;
            }
            // Owed until the fetch has succeeded: an error or a cancel
            // here loses the batch, and the consumer must hear of it.
            self.resync_owed = true;
            let changes = self.fetch(&keys).await;
            if changes.is_ok() {
                self.resync_owed = false;
            }
            return Some(changes);
        }
    }

    /// One query for every key of the batch.
    async fn fetch(&self, keys: &KeyOps) -> OrmResult<Vec<Change<M>>> {
        let mut json = String::with_capacity(keys.order.len() * 16 + 2);
        json.push('[');
        for (i, (key, _)) in keys.order.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(key);
        }
        json.push(']');
        let rows = self.client.query(&self.fetch_sql, &[&json]).await?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            let ordinal: i64 = crate::model::decode_at(row, 0)?;
            let found: bool = crate::model::decode_at(row, 1)?;
            let op = usize::try_from(ordinal - 1)
                .ok()
                .and_then(|index| keys.order.get(index))
                .map_or(b'U', |(_, op)| *op);
            changes.push(if !found {
                Change::Deleted(M::key_from_row(row, 2)?)
            } else if op == b'U' {
                Change::Updated(M::from_row(row)?)
            } else {
                // Inserted last, or deleted and inserted again since.
                Change::Inserted(M::from_row(row)?)
            });
        }
        Ok(changes)
    }
}

/// The distinct keys of a batch (as the trigger's JSON text), in order of
/// first appearance, each with the last operation seen for it.
struct KeyOps {
    order: Vec<(String, u8)>,
}

impl KeyOps {
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

fn collect_keys(batch: &NotificationBatch) -> Option<KeyOps> {
    let mut order: Vec<(String, u8)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for notification in batch.iter() {
        let (op, keys) = parse_payload(&notification.payload)?;
        if op == b'T' {
            // A TRUNCATE: every row is gone, which no key list tells.
            return None;
        }
        for key in keys {
            let text = key.get();
            if !text.starts_with('{') {
                return None;
            }
            match index.get(text) {
                Some(&at) => order[at].1 = op,
                None => {
                    index.insert(text, order.len());
                    order.push((text.to_owned(), op));
                }
            }
        }
    }
    Some(KeyOps { order })
}

/// Reads `{"op":"I|U|D|T","keys":[...]}` as the trigger writes it: the
/// operation and each key's JSON text as it is (no re-encoding).
fn parse_payload(payload: &str) -> Option<(u8, Vec<&serde_json::value::RawValue>)> {
    let rest = payload.strip_prefix(r#"{"op":""#)?;
    let op = match rest.as_bytes().first()? {
        b'I' => b'I',
        b'U' => b'U',
        b'D' => b'D',
        b'T' => b'T',
        _ => return None,
    };
    let keys = rest[1..].strip_prefix(r#"","keys":"#)?.strip_suffix('}')?;
    serde_json::from_str(keys).ok().map(|keys| (op, keys))
}

/// Refuses a table whose triggers are missing or written for another
/// channel (the table was renamed or moved since `install`): the feed
/// would wait for ever. Any feed version will do: the payloads are the
/// same, so an older application keeps working after a newer one upgraded
/// the triggers.
async fn check_installed<M: Model>(client: &impl GenericClient) -> OrmResult<()> {
    let (installed, table) = notifies_current_channel::<M>(client).await?;
    if installed {
        return Ok(());
    }
    Err(ValidationError::Setting {
        setting: "change feed",
        reason: format!(
            "the change feed of {table} is not installed for the table as it is now named \
             (missing, or the table was renamed or moved since): call changes::install first"
        ),
    }
    .into())
}

/// The SQL types of the key columns, as the server writes them
/// (`format_type`, quoted where needed).
async fn key_types<M: Model>(client: &impl GenericClient) -> OrmResult<Vec<String>> {
    let table = qualified_table::<M>()?;
    let mut types = Vec::with_capacity(M::KEY_COLUMNS.len());
    for column in M::KEY_COLUMNS {
        let row = client
            .query_one(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attname = $2 \
                   AND a.attnum > 0 AND NOT a.attisdropped",
                &[&table, column],
            )
            .await?;
        types.push(crate::model::decode_at(&row, 0)?);
    }
    Ok(types)
}

/// `"pgorm ordinal", "pgorm found", key columns…, model columns…` for a
/// JSON array of keys: each key becomes a record of the key columns only
/// (`jsonb_to_record` with their types: a row of the whole table would
/// check every other column's domain against NULL), joined to the table.
fn fetch_sql<M: Model>(key_types: &[String]) -> OrmResult<String> {
    let table = qualified_table::<M>()?;
    // Aliased so that a model column called `ordinal` (read by name) is
    // the table's, not the batch position.
    let mut select = String::from(
        "SELECT e.ordinal AS \"pgorm ordinal\", t.ctid IS NOT NULL AS \"pgorm found\"",
    );
    let mut join = String::new();
    let mut record = Vec::with_capacity(key_types.len());
    for (i, (column, ty)) in M::KEY_COLUMNS.iter().zip(key_types).enumerate() {
        let column = quote_identifier(column)?;
        record.push(format!("{column} {ty}"));
        select.push_str(&format!(", k.{column} AS \"pgorm key {i}\""));
        join.push_str(if i == 0 { " ON " } else { " AND " });
        join.push_str(&format!("t.{column} = k.{column}"));
    }
    for column in M::COLUMNS {
        let column = quote_identifier(column)?;
        select.push_str(&format!(", t.{column}"));
    }
    Ok(format!(
        "{select} FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS e(key, ordinal) \
         CROSS JOIN LATERAL jsonb_to_record(e.key) AS k({record}) \
         LEFT JOIN {table} t{join} ORDER BY e.ordinal",
        record = record.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_payload;

    #[test]
    fn payloads_of_the_trigger_are_read_and_others_refused() {
        let (op, keys) = parse_payload(r#"{"op":"U","keys":[{"id":1},{"id":"a,}]"}]}"#).unwrap();
        assert_eq!(op, b'U');
        let keys: Vec<&str> = keys.iter().map(|k| k.get()).collect();
        assert_eq!(keys, [r#"{"id":1}"#, r#"{"id":"a,}]"}"#]);
        assert!(parse_payload(r#"{"op":"X","keys":[]}"#).is_none());
        assert!(parse_payload("hello").is_none());
        assert!(parse_payload(r#"{"op":"I","keys":[{"id":1}"#).is_none());
    }
}

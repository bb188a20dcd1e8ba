//! Publishing: [`notify`] sends one notification with `pg_notify`, on any
//! client, inside or outside a transaction.

use crate::client::GenericClient;
use crate::error::{OrmResult, ValidationError};
use crate::listen::channel::validate_channel;

/// PostgreSQL refuses payloads of this many bytes or more.
pub const MAX_PAYLOAD_LEN: usize = 8000;

/// Checks that `payload` can be sent: shorter than 8000 bytes (UTF-8), no
/// NUL byte.
///
/// # Errors
/// [`ValidationError::PayloadTooLarge`] or [`ValidationError::NulInPayload`].
pub fn validate_payload(payload: &str) -> Result<(), ValidationError> {
    if payload.len() >= MAX_PAYLOAD_LEN {
        return Err(ValidationError::PayloadTooLarge {
            len: payload.len(),
            limit: MAX_PAYLOAD_LEN,
        });
    }
    if payload.contains('\0') {
        return Err(ValidationError::NulInPayload);
    }
    Ok(())
}

/// Sends a notification on `channel` with `payload`, through
/// `SELECT pg_notify($1, $2)` with bind parameters (the channel keeps its
/// exact case; nothing is interpolated into SQL).
///
/// Inside a transaction, the notification is delivered when the transaction
/// commits, and not at all if it rolls back.
///
/// # Errors
/// [`OrmError::Validation`](crate::OrmError::Validation) for an invalid
/// channel or payload, before anything is sent; the client's errors
/// otherwise.
pub async fn notify<C: GenericClient + ?Sized>(
    client: &C,
    channel: &str,
    payload: &str,
) -> OrmResult<()> {
    validate_channel(channel)?;
    validate_payload(payload)?;
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await?;
    Ok(())
}

/// Sends many notifications in one round trip, in the order given, through
/// one `SELECT pg_notify(…)` over arrays bound as parameters. Every channel
/// and payload is validated first; if any is invalid, nothing is sent.
/// Returns how many were sent.
///
/// Inside a transaction they are delivered together at commit. PostgreSQL
/// folds identical notifications (same channel and payload) of one
/// transaction into one.
///
/// # Errors
/// As [`notify`].
pub async fn notify_batch<C, I, S, P>(client: &C, notifications: I) -> OrmResult<u64>
where
    C: GenericClient + ?Sized,
    I: IntoIterator<Item = (S, P)>,
    S: AsRef<str>,
    P: AsRef<str>,
{
    let mut channels = Vec::new();
    let mut payloads = Vec::new();
    for (channel, payload) in notifications {
        validate_channel(channel.as_ref())?;
        validate_payload(payload.as_ref())?;
        channels.push(channel.as_ref().to_owned());
        payloads.push(payload.as_ref().to_owned());
    }
    if channels.is_empty() {
        return Ok(0);
    }
    client
        .execute(
            "SELECT pg_notify(channel, payload) \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS n(channel, payload, position) \
             ORDER BY position",
            &[&channels, &payloads],
        )
        .await
}

impl crate::PgClient {
    /// [`notify`] on a pooled connection.
    ///
    /// # Errors
    /// As [`notify`].
    pub async fn notify(&self, channel: &str, payload: &str) -> OrmResult<()> {
        notify(self, channel, payload).await
    }

    /// [`notify_batch`] on a pooled connection.
    ///
    /// # Errors
    /// As [`notify`].
    pub async fn notify_batch<I, S, P>(&self, notifications: I) -> OrmResult<u64>
    where
        I: IntoIterator<Item = (S, P)>,
        S: AsRef<str>,
        P: AsRef<str>,
    {
        notify_batch(self, notifications).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_limits_count_bytes() {
        assert_eq!(validate_payload(&"a".repeat(7999)), Ok(()));
        assert_eq!(
            validate_payload(&"a".repeat(8000)),
            Err(ValidationError::PayloadTooLarge {
                len: 8000,
                limit: 8000
            })
        );
        // 2667 three-byte characters: 8001 bytes, though only 2667 chars.
        assert!(matches!(
            validate_payload(&"€".repeat(2667)),
            Err(ValidationError::PayloadTooLarge { len: 8001, .. })
        ));
        assert_eq!(validate_payload("a\0b"), Err(ValidationError::NulInPayload));
    }
}

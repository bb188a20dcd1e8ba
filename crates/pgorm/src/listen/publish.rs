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

//! What an application uses every day: `use pgorm::prelude::*;`.

pub use crate::client::{GenericClient, RowStream, StreamingClient};
pub use crate::error::{OrmError, OrmResult, ValidationError};
#[cfg(feature = "listen")]
pub use crate::listen::{
    notify, ListenerEvent, ListenerState, ListenerStats, PgListener, PgListenerConfig,
    PgNotification, QueuePolicy,
};
pub use crate::pg_client::{PgClient, PgTransaction};
pub use crate::pool::PoolConfig;
pub use tokio_postgres::Row;

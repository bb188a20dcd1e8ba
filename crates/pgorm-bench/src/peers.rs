//! The consumers measured: the raw tokio-postgres loop (the floor), pgorm's
//! `PgListener` and `PgNotifyHub`, and sqlx's `PgListener`, behind one
//! interface the workloads drive; and over TLS (rustls), the raw loop and
//! pgorm's `PgListener` with the same connector.

use std::future::{poll_fn, Future};
use std::task::Poll;

use pgorm::listen::{
    ListenerEvent, PgListener, PgListenerConfig, PgNotifyHub, QueuePolicy, Subscription,
};
use pgorm::tls::MakeRustlsConnect;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket};

/// The stream of a rustls connection, as tokio-postgres drives it.
type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// A notification as the workloads see it: its payload.
pub type Payload = String;

/// What a consumer yields. The payload is copied out only when asked for
/// (latency and reconnect read it; counting must not pay for it).
pub enum Received {
    Notification(Option<Payload>),
    /// A gap marker (pgorm only): `Lagged` carries how many were dropped.
    Lagged(u64),
    Reconnected,
}

/// The raw loop: the next notification straight off `poll_message`. A
/// macro, so that the plain and the TLS loop compile exactly as written here,
/// inline in `Consumer::next`.
macro_rules! raw_next {
    ($connection:expr, $take:expr) => {
        poll_fn(|cx| loop {
            return match $connection.poll_message(cx) {
                Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                    Poll::Ready(Some(Received::Notification($take(n.payload()))))
                }
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        })
        .await
    };
}

/// A peer's consumer, connected and listening.
// One value per run: its size does not matter, and boxing the raw
// connection would add an indirection to the floor being measured.
#[allow(clippy::large_enum_variant)]
pub enum Consumer {
    Raw {
        // Kept alive: dropping the client ends the connection.
        _client: Client,
        connection: Connection<Socket, tokio_postgres::tls::NoTlsStream>,
    },
    RawTls {
        _client: Client,
        connection: Connection<Socket, RustlsStream>,
    },
    Listener(PgListener),
    /// The same listener, counted with `next_batch` (markers read in
    /// order with the notifications).
    ListenerBatch(PgListener),
    Hub {
        // Kept alive: the last clone closes the connection.
        _hub: PgNotifyHub,
        subscription: Subscription,
    },
    Sqlx(sqlx::postgres::PgListener),
}

/// The peers, by the names used on the command line and in the tables.
pub const RAW: &str = "raw tokio-postgres";
pub const LISTENER: &str = "pgorm PgListener";
pub const LISTENER_BATCH: &str = "pgorm PgListener next_batch";
pub const HUB: &str = "pgorm PgNotifyHub";
pub const SQLX: &str = "sqlx PgListener";
/// The TLS peers: same server, rustls with the connector pgorm provides.
pub const RAW_TLS: &str = "raw tokio-postgres TLS";
pub const LISTENER_TLS: &str = "pgorm PgListener TLS";

/// Environment variables through which the parent hands the TLS settings to
/// its children: the URL (`sslmode=require`) and the CA certificate (PEM).
pub const TLS_URL_VAR: &str = "PGORM_BENCH_TLS_URL";
pub const TLS_CA_VAR: &str = "PGORM_BENCH_TLS_CA_PEM";

/// The TLS URL and a connector trusting the server's CA, as the parent
/// handed them over.
pub fn tls_from_env() -> (String, MakeRustlsConnect) {
    let url = std::env::var(TLS_URL_VAR).expect("the TLS URL from the parent");
    let pem = std::env::var(TLS_CA_VAR).expect("the CA certificate from the parent");
    let connector =
        pgorm::tls::rustls_connector_with_pem_roots(pem.as_bytes()).expect("a TLS connector");
    (url, connector)
}

impl Consumer {
    /// Connects peer `peer` to `url` and listens to `channel`. `policy`
    /// applies to pgorm's queue.
    pub async fn connect(
        peer: &str,
        url: &str,
        channel: &str,
        application_name: &str,
        policy: QueuePolicy,
    ) -> Consumer {
        let config = PgListenerConfig::new()
            .application_name(application_name)
            .queue_policy(policy)
            .backoff(
                std::time::Duration::from_millis(10),
                std::time::Duration::from_secs(1),
            );
        match peer {
            RAW => {
                let (client, mut connection) = tokio_postgres::connect(url, NoTls)
                    .await
                    .expect("raw connect");
                raw_listen(&client, &mut connection, channel).await;
                Consumer::Raw {
                    _client: client,
                    connection,
                }
            }
            RAW_TLS => {
                let (url, tls) = tls_from_env();
                let (client, mut connection) = tokio_postgres::connect(&url, tls)
                    .await
                    .expect("raw TLS connect");
                raw_listen(&client, &mut connection, channel).await;
                Consumer::RawTls {
                    _client: client,
                    connection,
                }
            }
            LISTENER_TLS => {
                let (url, tls) = tls_from_env();
                let pg_config: tokio_postgres::Config = url.parse().expect("TLS URL");
                let listener =
                    PgListener::connect_with_tls(pg_config, tls, config.channels([channel]))
                        .await
                        .expect("TLS listener");
                Consumer::Listener(listener)
            }
            LISTENER | LISTENER_BATCH => {
                let listener = PgListener::connect_with(url, config.channels([channel]))
                    .await
                    .expect("listener");
                if peer == LISTENER {
                    Consumer::Listener(listener)
                } else {
                    Consumer::ListenerBatch(listener)
                }
            }
            HUB => {
                let hub = PgNotifyHub::connect_with(url, config).await.expect("hub");
                let subscription = hub.subscribe(channel).await.expect("subscribe");
                Consumer::Hub {
                    _hub: hub,
                    subscription,
                }
            }
            SQLX => {
                let url = with_application_name(url, application_name);
                let mut listener = sqlx::postgres::PgListener::connect(&url)
                    .await
                    .expect("sqlx connect");
                listener.listen(channel).await.expect("sqlx LISTEN");
                Consumer::Sqlx(listener)
            }
            other => panic!("unknown peer {other}"),
        }
    }

    /// The next notification or marker; `None` when the peer gave up.
    pub async fn next(&mut self, payload: bool) -> Option<Received> {
        let take = |text: &str| payload.then(|| text.to_owned());
        match self {
            Consumer::Raw { connection, .. } => raw_next!(connection, take),
            Consumer::RawTls { connection, .. } => raw_next!(connection, take),
            Consumer::Listener(listener) | Consumer::ListenerBatch(listener) => {
                convert(listener.next_event().await, take)
            }
            Consumer::Hub { subscription, .. } => convert(subscription.next_event().await, take),
            Consumer::Sqlx(listener) => loop {
                // recv() reconnects by itself after a loss.
                match listener.recv().await {
                    Ok(notification) => {
                        return Some(Received::Notification(take(notification.payload())))
                    }
                    Err(_) => continue,
                }
            },
        }
    }

    /// Counts notifications until `count` have arrived; markers are
    /// returned as (received, dropped).
    pub async fn count(&mut self, count: u64) -> (u64, u64) {
        let (mut received, mut dropped) = (0, 0);
        if let Consumer::ListenerBatch(listener) = self {
            while received + dropped < count {
                let Some(Ok(batch)) = listener.next_batch().await else {
                    break;
                };
                for event in batch {
                    match event {
                        ListenerEvent::Notification(_) => received += 1,
                        ListenerEvent::Lagged { dropped: d } => dropped += d,
                        _ => {}
                    }
                }
            }
            return (received, dropped);
        }
        while received + dropped < count {
            match self.next(false).await {
                Some(Received::Notification(_)) => received += 1,
                Some(Received::Lagged(n)) => dropped += n,
                Some(Received::Reconnected) => {}
                None => break,
            }
        }
        (received, dropped)
    }

    /// pgorm's own count of notifications read from the socket.
    pub fn pgorm_received(&self) -> Option<u64> {
        match self {
            Consumer::Listener(listener) | Consumer::ListenerBatch(listener) => {
                Some(listener.stats().received)
            }
            _ => None,
        }
    }
}

/// LISTEN on a raw connection, driving it until the reply is in.
async fn raw_listen<S, T>(client: &Client, connection: &mut Connection<S, T>, channel: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let listen = format!("LISTEN \"{channel}\"");
    let mut statement = std::pin::pin!(client.batch_execute(&listen));
    poll_fn(|cx| {
        while let Poll::Ready(Some(_)) = connection.poll_message(cx) {}
        statement.as_mut().poll(cx)
    })
    .await
    .expect("raw LISTEN");
}

fn convert<N: std::borrow::Borrow<pgorm::PgNotification>>(
    event: Option<pgorm::OrmResult<ListenerEvent<N>>>,
    take: impl Fn(&str) -> Option<Payload>,
) -> Option<Received> {
    match event? {
        Ok(ListenerEvent::Notification(n)) => {
            Some(Received::Notification(take(&n.borrow().payload)))
        }
        Ok(ListenerEvent::Lagged { dropped }) => Some(Received::Lagged(dropped)),
        Ok(ListenerEvent::Reconnected { .. }) => Some(Received::Reconnected),
        Ok(_) => Some(Received::Reconnected),
        Err(_) => None,
    }
}

fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

/// Subscriptions of a hub, for the fan-out measurement.
pub async fn hub_with_subscribers(
    url: &str,
    channel: &str,
    subscribers: usize,
) -> (PgNotifyHub, Vec<Subscription>) {
    let hub = PgNotifyHub::connect(url).await.expect("hub");
    let mut subscriptions = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        subscriptions.push(hub.subscribe(channel).await.expect("subscribe"));
    }
    (hub, subscriptions)
}

/// How each subscriber reads in the fan-out measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubRead {
    /// `next_event`: one shared `Arc<PgNotification>` at a time.
    Event,
    /// `next_ref`: one lent `&PgNotification` at a time.
    Ref,
    /// `next_batch`: whole shared batches.
    Batch,
}

/// The subscribers and the read of a run named
/// `pgorm PgNotifyHub x<N>[ next_ref| next_batch]`; `None` for other runs.
pub fn hub_run(run: &str) -> Option<(usize, HubRead)> {
    let rest = run.strip_prefix("pgorm PgNotifyHub x")?;
    let (subscribers, read) = match rest.split_once(' ') {
        Some((n, "next_batch")) => (n, HubRead::Batch),
        Some((n, "next_ref")) => (n, HubRead::Ref),
        Some((_, other)) => panic!("unknown hub read {other}"),
        None => (rest, HubRead::Event),
    };
    Some((subscribers.parse().expect("subscribers"), read))
}

/// Reads `subscription` until `total` notifications have arrived or been
/// dropped; returns how many were dropped.
pub async fn drain_subscription(mut subscription: Subscription, total: u64, read: HubRead) -> u64 {
    let (mut seen, mut dropped) = (0, 0);
    while seen + dropped < total {
        let marker = match read {
            HubRead::Event => match subscription.next_event().await {
                Some(Ok(ListenerEvent::Notification(_))) => {
                    seen += 1;
                    continue;
                }
                Some(Ok(event)) => lagged(&event),
                _ => break,
            },
            HubRead::Ref => match subscription.next_ref().await {
                Some(Ok(ListenerEvent::Notification(_))) => {
                    seen += 1;
                    continue;
                }
                Some(Ok(event)) => lagged(&event),
                _ => break,
            },
            HubRead::Batch => match subscription.next_batch().await {
                Some(Ok(ListenerEvent::Notification(batch))) => {
                    seen += batch.len() as u64;
                    continue;
                }
                Some(Ok(event)) => lagged(&event),
                _ => break,
            },
        };
        dropped += marker;
    }
    dropped
}

/// How many notifications a marker says were dropped.
fn lagged<N>(event: &ListenerEvent<N>) -> u64 {
    match event {
        ListenerEvent::Lagged { dropped } => *dropped,
        _ => 0,
    }
}

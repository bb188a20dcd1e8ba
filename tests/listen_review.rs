//! Regressions found by a hostile review of the listener hardening: each
//! test failed against the code as it was reviewed (d853d1c) and passes
//! since the fix; the comment above each says what it showed. Every wait is
//! bounded.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pgorm::listen::{ListenerEvent, PgListener, PgListenerConfig, QueuePolicy};
use pgorm_testkit::SUPERUSER;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------
// Found in review: BlockProducer drops notifications although its consumer
// never stalls. The driver reads a batch of up to 256 into `pending` whatever
// the queue's free room, and the block deadline (`Driver::blocked`) is only
// reset when the WHOLE pending batch fits (`Pushed::All`); progress by the
// consumer does not reset it. With a small queue the "block" is pgorm's own
// over-read, and it outlives `block_timeout` while the consumer takes a
// notification every 20 ms. Fixed: any progress restarts the block timeout.
// ---------------------------------------------------------------------------
#[tokio::test]
async fn block_producer_does_not_drop_while_its_consumer_keeps_up_steadily() {
    let channel = unique("review_steady");
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .queue_capacity(10)
        .queue_policy(QueuePolicy::BlockProducer)
        .block_timeout(Duration::from_secs(1));
    let mut listener = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap();
    let admin = raw_client(&TestServer::shared().url()).await;
    send_numbered(&admin, &channel, 0, 200).await;
    // A consumer that never stops: one notification every 20 ms, so the
    // queue of 10 is never full for more than ~200 ms, far below the
    // block timeout of 1 s.
    let mut gaps = Vec::new();
    let mut expected = 0;
    while expected < 200 {
        match next_event(&mut listener).await {
            ListenerEvent::Notification(n) => {
                let got: i32 = n.payload.parse().unwrap();
                if got != expected {
                    gaps.push((expected, got));
                }
                expected = got + 1;
            }
            ListenerEvent::Lagged { dropped } => gaps.push((expected, -(dropped as i32))),
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = listener.stats();
    within("close", listener.close()).await.unwrap();
    assert!(
        gaps.is_empty() && stats.dropped == 0,
        "BlockProducer dropped notifications of a consumer that never stalled \
         longer than 20 ms: gaps {gaps:?}, {stats:?}"
    );
}

// ---------------------------------------------------------------------------
// Found in review: the "end the earlier backend" step
// (`Session::terminate`, session.rs:107) kills a live session when the
// listener goes through a session-mode pooler (PgBouncer pool_mode=session,
// Pgpool, ...). When the client side of the old session goes away, the
// pooler keeps the server connection and hands it to the next client — here
// the listener's own reconnect — so the "earlier" (pid, backend_start)
// names a backend that is now serving a new, live session, and
// pg_terminate_backend kills it. With any other client of the pool it kills
// that client's session. Here the listener kills its own fresh session and
// has to reconnect a second time (a second gap) for one fault. Fixed: only
// a session the health check gave up has its backend ended, and only one
// idle since before the check (and `end_abandoned_backends(false)` turns it
// off).
// ---------------------------------------------------------------------------

/// A toy session-mode pooler with one pooled server connection, opened
/// over the server's Unix socket (local trust): each client's startup is
/// answered with the recorded startup reply of the pooled connection, and
/// when a client goes away (or is cut) the server connection stays in the
/// pool for the next client, as PgBouncer does in session mode.
struct ToyPooler {
    port: u16,
    cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ToyPooler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one length-prefixed startup packet (no type byte).
async fn read_packet(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let length = stream.read_u32().await? as usize;
    let mut body = vec![0; length.saturating_sub(4)];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Opens a server connection and returns it with the server's reply to the
/// startup, up to and including the first ReadyForQuery.
async fn open_upstream(socket: &std::path::Path, application_name: &str) -> (UnixStream, Vec<u8>) {
    let mut server = UnixStream::connect(socket).await.expect("upstream");
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (key, value) in [
        ("user", SUPERUSER),
        ("database", "postgres"),
        ("application_name", application_name),
    ] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    server.write_all(&packet).await.unwrap();
    let mut recorded = Vec::new();
    loop {
        let kind = server.read_u8().await.unwrap();
        let length = server.read_u32().await.unwrap() as usize;
        let mut rest = vec![0; length - 4];
        server.read_exact(&mut rest).await.unwrap();
        recorded.push(kind);
        recorded.extend_from_slice(&(length as u32).to_be_bytes());
        recorded.extend_from_slice(&rest);
        assert_ne!(kind, b'E', "upstream startup failed");
        if kind == b'Z' {
            return (server, recorded);
        }
    }
}

impl ToyPooler {
    async fn start(server: &TestServer, application_name: &str) -> ToyPooler {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let socket = server
            .socket_directory()
            .join(format!(".s.PGSQL.{}", server.port()));
        let cut = Arc::new(Notify::new());
        let application_name = application_name.to_owned();
        let task = tokio::spawn({
            let cut = cut.clone();
            async move {
                let mut pooled: Option<(UnixStream, Vec<u8>)> = None;
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    // The client's startup (after a refused SSLRequest).
                    let Ok(mut packet) = read_packet(&mut client).await else {
                        continue;
                    };
                    if packet.len() == 4 && packet[..4] == 80_877_103u32.to_be_bytes() {
                        if client.write_all(b"N").await.is_err() {
                            continue;
                        }
                        let Ok(next) = read_packet(&mut client).await else {
                            continue;
                        };
                        packet = next;
                    }
                    let _ = packet;
                    let (mut upstream, startup) = match pooled.take() {
                        Some(pooled) => pooled,
                        None => open_upstream(&socket, &application_name).await,
                    };
                    if client.write_all(&startup).await.is_err() {
                        pooled = Some((upstream, startup));
                        continue;
                    }
                    // Relay bytes until the client leaves (or is cut): the
                    // server connection goes back to the pool; or until
                    // the server ends it.
                    let server_alive = {
                        let (mut client_read, mut client_write) = client.split();
                        let (mut server_read, mut server_write) = upstream.split();
                        let mut from_client = vec![0u8; 64 * 1024];
                        let mut from_server = vec![0u8; 64 * 1024];
                        loop {
                            tokio::select! {
                                read = client_read.read(&mut from_client) => match read {
                                    Ok(0) | Err(_) => break true,
                                    Ok(n) => {
                                        if server_write.write_all(&from_client[..n]).await.is_err() {
                                            break false;
                                        }
                                    }
                                },
                                read = server_read.read(&mut from_server) => match read {
                                    Ok(0) | Err(_) => break false,
                                    Ok(n) => {
                                        if client_write.write_all(&from_server[..n]).await.is_err() {
                                            break true;
                                        }
                                    }
                                },
                                _ = cut.notified() => break true,
                            }
                        }
                    };
                    drop(client);
                    if server_alive {
                        pooled = Some((upstream, startup));
                    }
                }
            }
        });
        ToyPooler { port, cut, task }
    }

    fn url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}:unused@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Closes the current client's side; the pooled server connection
    /// stays (an app-side network cut, or a pooler's client timeout).
    fn cut_client(&self) {
        self.cut.notify_one();
    }
}

/// Records why each session ended.
struct Disconnects(Arc<std::sync::Mutex<Vec<String>>>);

impl pgorm::listen::ListenerHooks for Disconnects {
    fn on_disconnect(&self, cause: &pgorm::OrmError) {
        self.0.lock().unwrap().push(format!("{cause}"));
    }
}

#[tokio::test]
async fn a_cut_behind_a_session_pooler_never_ends_a_live_session() {
    let server = TestServer::shared();
    let name = unique("review_pooled");
    let channel = unique("review_pooled_channel");
    let pooler = ToyPooler::start(server, &name).await;
    let causes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(5))
        .hooks(Disconnects(causes.clone()));
    let mut listener = within(
        "connect through the pooler",
        PgListener::connect_with(&pooler.url(), config),
    )
    .await
    .unwrap();
    let admin = raw_client(&server.url()).await;
    let pooled = backends_named(&admin, &name).await;
    assert_eq!(pooled.len(), 1, "one pooled server connection");

    // The client side goes away; the pooler keeps the server connection and
    // hands it to the next client: the listener's own reconnect.
    pooler.cut_client();
    assert_eq!(
        next_event(&mut listener).await,
        ListenerEvent::Reconnected { generation: 1 }
    );
    // Give the "end the earlier backend" statement time to run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = backends_named(&admin, &name).await;
    let stats = listener.stats();
    within("close", listener.close()).await.ok();
    // What the server logged for the pooled backend.
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    let marker = format!("[{}]", pooled[0]);
    let logged: Vec<&str> = log.lines().filter(|line| line.contains(&marker)).collect();
    assert!(
        now == pooled && stats.reconnects == 1,
        "the listener terminated the pooled backend {pooled:?} that the pooler had \
         handed to a live session (its own new one): backends now {now:?}, \
         reconnects {} for one fault; disconnect causes: {:?}; server log of the pooled backend: {logged:?}",
        stats.reconnects,
        causes.lock().unwrap()
    );
}

// ---------------------------------------------------------------------------
// Found in review: a multi-host URL never fails over past a first host
// that does not answer. libpq (and tokio-postgres) apply `connect_timeout`
// to EACH host in turn; pgorm copies the same value (the URL's, or its 10 s
// default written into the config by `apply_defaults`) into the bound of the
// WHOLE opening (session.rs:269, `tokio::time::timeout(timeout,
// connect_and_listen)`), so the outer timer fires when tokio-postgres gives
// up on the first host, before the second is even tried. Fixed: the
// opening is bounded by one timeout per host plus one.
// ---------------------------------------------------------------------------

/// A loopback port whose SYNs go unanswered (its accept queue is full), as
/// a dead host's would.
async fn unanswering_port() -> (
    tokio::net::TcpListener,
    Vec<tokio::task::JoinHandle<()>>,
    u16,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let fillers = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
                    std::future::pending::<()>().await;
                    drop(stream);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    (listener, fillers, port)
}

#[tokio::test]
async fn a_multi_host_url_fails_over_past_a_dead_first_host_as_tokio_postgres_does() {
    let (_stuck, fillers, stuck_port) = unanswering_port().await;
    let server = TestServer::shared();
    let url = format!(
        "postgres://{SUPERUSER}:{}@127.0.0.1:{stuck_port},127.0.0.1:{}/postgres?connect_timeout=2",
        server.password(),
        server.port()
    );
    // The control: tokio-postgres gives the dead host 2 s, then connects
    // to the second.
    let started = std::time::Instant::now();
    let raw = within(
        "tokio-postgres connect",
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await;
    let raw_took = started.elapsed();
    assert!(
        raw.is_ok(),
        "control: tokio-postgres failed over: {:?}",
        raw.err()
    );
    drop(raw);

    let channel = unique("review_failover");
    let started = std::time::Instant::now();
    let listener = within(
        "listener connect",
        PgListener::connect_with(&url, PgListenerConfig::new().channels([channel.as_str()])),
    )
    .await;
    let took = started.elapsed();
    for filler in fillers {
        filler.abort();
    }
    match listener {
        Ok(listener) => {
            listener.close().await.ok();
        }
        Err(error) => panic!(
            "tokio-postgres connected through the second host in {raw_took:?}; \
             the listener gave up after {took:?}: {error}"
        ),
    }
}

// ---------------------------------------------------------------------------
// Found in review: a `ListenerSession` kept by the `on_connect`
// callback (it is `'static` and owns an `Arc<Client>`, nothing says it must
// not outlive the call) keeps the listener's `Client` alive, so
// `Session::close` (session.rs:197, "with the last client gone, the
// connection sends Terminate") waits its full 5 s and `close()` reports a
// timeout for a healthy connection. Fixed: a client held elsewhere makes
// close drop the socket instead of waiting.
// ---------------------------------------------------------------------------
#[tokio::test]
async fn close_is_clean_when_on_connect_kept_its_session() {
    let kept = Arc::new(std::sync::Mutex::new(None));
    let config = {
        let kept = kept.clone();
        PgListenerConfig::new().on_connect(move |session: pgorm::listen::ListenerSession| {
            let kept = kept.clone();
            async move {
                // e.g. to run a reload later on the same session
                *kept.lock().unwrap() = Some(session);
                Ok::<_, pgorm::OrmError>(())
            }
        })
    };
    let listener = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let closed = within("close", listener.close()).await;
    let took = started.elapsed();
    assert!(
        closed.is_ok() && took < Duration::from_secs(2),
        "close of a healthy listener took {took:?} and returned {closed:?}"
    );
    drop(kept);
}

// ---------------------------------------------------------------------------
// Found in review: with BlockProducer, a consumer's own listen() on a dead
// path waits for `block_timeout` (here 120 s), not for the health check. The
// health check is "paused" whenever the sink is blocked
// (driver.rs:622 `paused = self.blocked.is_some()`; health.rs:110 pushes a
// running check's deadline back and starts none), even while the driver is
// reading on for a statement of its own (driver.rs:592). So nothing notices
// that the reply will never come. Fixed: the check runs while a statement
// waits for its reply.
// ---------------------------------------------------------------------------
#[tokio::test]
async fn a_block_producer_listen_on_a_dead_path_returns_within_the_health_check() {
    let server = TestServer::shared();
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let channel = unique("review_dead_block");
    let other = unique("review_dead_block_other");
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .queue_capacity(10)
        .queue_policy(QueuePolicy::BlockProducer)
        .block_timeout(Duration::from_secs(120))
        .health_check(Duration::from_millis(200), Duration::from_millis(500))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2));
    let listener = PgListener::connect_with(&proxy.url_for(&server.url()), config)
        .await
        .unwrap();
    let admin = raw_client(&server.url()).await;
    send_numbered(&admin, &channel, 0, 1000).await;
    eventually("the queue to fill", || async {
        listener.stats().queued == 10
    })
    .await;
    // The path dies (no FIN, no RST), then the consumer changes channels.
    proxy.sever_open_connections();
    let started = std::time::Instant::now();
    let listened = tokio::time::timeout(Duration::from_secs(10), listener.listen(&other)).await;
    assert!(
        listened.is_ok(),
        "listen() on a BlockProducer listener whose path died was still waiting after \
         {:?}; the health check (500 ms) never ended the dead session: state {:?}, {:?}",
        started.elapsed(),
        listener.state(),
        listener.stats()
    );
}

//! A fault-injecting TCP proxy for loopback tests: it forwards bytes between
//! clients and an upstream server until told to cut, refuse or blackhole.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyMode {
    /// Forward bytes both ways (the default).
    Pass,
    /// Close every new connection as soon as it is accepted. Connections
    /// already open are left alone (use [`FaultProxy::cut_all`] for those).
    Refuse,
    /// Keep every socket open but forward nothing, like a network path that
    /// died without a FIN or RST. Bytes read meanwhile are held and forwarded
    /// if the mode goes back to [`Pass`](ProxyMode::Pass), as TCP would
    /// retransmit them; new connections are accepted but not forwarded.
    Blackhole,
}

/// A TCP proxy on `127.0.0.1` in front of one upstream port.
///
/// Must be created inside a tokio runtime; it stops (closing every connection
/// it holds) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    upstream_port: u16,
    mode: watch::Sender<ProxyMode>,
    cuts: watch::Sender<u64>,
    severs: watch::Sender<u64>,
    active: Arc<AtomicUsize>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, forwarding to
    /// `127.0.0.1:upstream_port`.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start(upstream_port: u16) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let (mode, _) = watch::channel(ProxyMode::Pass);
        let (cuts, _) = watch::channel(0u64);
        let (severs, _) = watch::channel(0u64);
        let active = Arc::new(AtomicUsize::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            upstream,
            mode.clone(),
            cuts.clone(),
            severs.clone(),
            active.clone(),
        ));
        Ok(FaultProxy {
            port,
            upstream_port,
            mode,
            cuts,
            severs,
            active,
            accept_task,
        })
    }

    /// The proxy's own port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `url` with the upstream's `127.0.0.1:PORT` replaced by the proxy's, so
    /// a client connects through the proxy.
    ///
    /// # Panics
    /// When `url` does not contain `127.0.0.1:<upstream port>`.
    pub fn url_for(&self, url: &str) -> String {
        let upstream = format!("127.0.0.1:{}", self.upstream_port);
        assert!(
            url.contains(&upstream),
            "the URL does not point at the proxied server ({upstream})"
        );
        url.replacen(&upstream, &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Sets what the proxy does from now on.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Closes every connection open now, both sides, at once. New connections
    /// are handled according to the mode.
    pub fn cut_all(&self) {
        self.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// The connections open now go dead the way a lost network path does:
    /// from now on nothing more is forwarded on them either way, not even a
    /// close, so the server's side lives on until [`cut_all`](Self::cut_all)
    /// or its own keepalives end it. New connections are handled according
    /// to the mode.
    pub fn sever_open_connections(&self) {
        self.severs.send_modify(|severs| *severs += 1);
    }

    /// How many client connections the proxy holds open now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.cut_all();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    cuts: watch::Sender<u64>,
    severs: watch::Sender<u64>,
    active: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *mode.borrow() == ProxyMode::Refuse {
            drop(client);
            continue;
        }
        let mut mode = mode.subscribe();
        let mut cuts = cuts.subscribe();
        cuts.mark_unchanged();
        let severed = Severed {
            at: *severs.borrow(),
            severs: severs.subscribe(),
        };
        let active = active.clone();
        active.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::select! {
                _ = relay(client, upstream, &mut mode, severed) => {}
                _ = cuts.changed() => {}
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Whether a connection was severed after it was accepted.
#[derive(Clone)]
struct Severed {
    at: u64,
    severs: watch::Receiver<u64>,
}

impl Severed {
    /// Holds the caller (and the sockets it owns) forever once severed.
    async fn hold_if_severed(&self) {
        if *self.severs.borrow() > self.at {
            std::future::pending::<()>().await;
        }
    }
}

/// Forwards both ways until either side closes.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mode: &mut watch::Receiver<ProxyMode>,
    severed: Severed,
) -> io::Result<()> {
    wait_while_blackholed(mode).await;
    let server = TcpStream::connect(upstream).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        result = pump(client_read, server_write, mode.clone(), severed.clone()) => result,
        result = pump(server_read, client_write, mode.clone(), severed) => result,
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<ProxyMode>,
    severed: Severed,
) -> io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = from.read(&mut buffer).await?;
        severed.hold_if_severed().await;
        if read == 0 {
            return to.shutdown().await;
        }
        wait_while_blackholed(&mut mode).await;
        to.write_all(&buffer[..read]).await?;
    }
}

async fn wait_while_blackholed(mode: &mut watch::Receiver<ProxyMode>) {
    while *mode.borrow_and_update() == ProxyMode::Blackhole {
        if mode.changed().await.is_err() {
            // The proxy is gone: hold forever; the task is cut or aborted.
            std::future::pending::<()>().await;
        }
    }
}

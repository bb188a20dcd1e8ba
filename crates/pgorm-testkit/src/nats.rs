//! [`NatsServer`]: a throwaway `nats-server` with JetStream, for the relay's
//! tests and benchmark.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::process::{free_port, ChildSlot};
use crate::Error;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A `nats-server -js` on a free loopback port, with its own JetStream
/// store directory (file storage survives [`restart`](Self::restart) and
/// [`kill`](Self::kill)). Stopped and removed when dropped; a watchdog
/// process does the same if the test process dies.
///
/// The binary is `NATS_SERVER` when that variable is set, else
/// `nats-server` on `PATH` (Debian: `apt-get install -y nats-server`).
#[derive(Debug)]
pub struct NatsServer {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    child: ChildSlot,
}

/// Finds the `nats-server` binary.
///
/// # Errors
/// [`Error::NoNatsServer`], whose message says how to install it.
pub fn locate_nats_server() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(Error::NoNatsServer(format!(
            "NATS_SERVER={} is not a file",
            path.display()
        )));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]) {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::NoNatsServer("not on PATH nor in /usr/sbin".into()))
}

impl NatsServer {
    /// Starts a new server and waits until it accepts connections.
    ///
    /// # Errors
    /// [`Error::NoNatsServer`] when the binary is missing; [`Error::Setup`]
    /// when it exits or is not ready in time (with its log).
    pub fn spawn() -> Result<NatsServer, Error> {
        let bin = locate_nats_server()?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("pgorm-testkit-nats-{}-{id}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(dir.join("store"))?;
        spawn_watchdog(&dir)?;
        let mut last_error = None;
        // A free port can be taken by someone else before nats-server binds
        // it: retry on a new one.
        for _ in 0..5 {
            let server = NatsServer {
                dir: dir.clone(),
                port: free_port()?,
                bin: bin.clone(),
                child: ChildSlot::default(),
            };
            match server.start() {
                Ok(()) => return Ok(server),
                Err(error) => {
                    std::mem::forget(server);
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Setup("nats-server did not start".into())))
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The TCP port, the same for the server's whole life.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    /// Starts the server after [`stop`](Self::stop) or [`kill`](Self::kill)
    /// (same port, same store), waiting until it accepts connections. Does
    /// nothing if it runs.
    ///
    /// # Errors
    /// When it exits or is not ready within 30 s.
    pub fn start(&self) -> Result<(), Error> {
        let mut guard = self.child.lock();
        if let Some(child) = guard.as_mut() {
            if child.try_wait()?.is_none() {
                return Ok(());
            }
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.join("store"))
            .arg("-P")
            .arg(self.dir.join("nats.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(Error::Setup(format!(
                    "nats-server exited with {status}; its log is {}",
                    self.log_path().display()
                )));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.jetstream_ready() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Setup(format!(
                    "nats-server was not ready within {READY_TIMEOUT:?}; its log is {}",
                    self.log_path().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *guard = Some(child);
        Ok(())
    }

    /// Whether the log says JetStream is up (it starts before the client
    /// port opens, but a restart replays the store first).
    fn jetstream_ready(&self) -> bool {
        fs::read_to_string(self.log_path())
            .map(|log| {
                log.rsplit("Starting nats-server")
                    .next()
                    .is_some_and(|last| last.contains("Server is ready"))
            })
            .unwrap_or(false)
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit.
    ///
    /// # Errors
    /// When the process cannot be signalled.
    pub fn stop(&self) -> Result<(), Error> {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// Kills the server with SIGKILL, as a crash would.
    ///
    /// # Errors
    /// When the process cannot be signalled.
    pub fn kill(&self) -> Result<(), Error> {
        self.signal_and_wait(libc::SIGKILL)
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    ///
    /// # Errors
    /// As those two.
    pub fn restart(&self) -> Result<(), Error> {
        self.stop()?;
        self.start()
    }

    /// Whether the server process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_running()
    }

    fn signal_and_wait(&self, signal: libc::c_int) -> Result<(), Error> {
        self.child.signal_and_wait(signal, "nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A detached shell that kills the server and removes `dir` once this
/// process is gone (statics are never dropped; tests can die of a signal).
fn spawn_watchdog(dir: &Path) -> Result<(), Error> {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
        if [ -f "$2/nats.pid" ]; then kill -KILL "$(cat "$2/nats.pid")" 2>/dev/null; fi
        rm -rf "$2"
    "#;
    let mut command = Command::new("sh");
    command
        .args(["-c", script, "pgorm-testkit-nats-watchdog"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command.spawn()?;
    Ok(())
}

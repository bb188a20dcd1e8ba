//! A throwaway PostgreSQL server built from the binaries installed on this
//! machine: `initdb` into a temporary directory, `postgres` on a free
//! loopback port, with TLS on and a password-protected superuser.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::{free_port, ChildSlot};
use crate::{binaries, Error};

/// The superuser every throwaway server is created with.
pub const SUPERUSER: &str = "pgorm";

const READY_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The owner of the server's files and processes: the `postgres` system user
/// when this process runs as root (`initdb` and `postgres` refuse root), else
/// the current user.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    fn detect() -> Result<Option<RunAs>, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let name = c"postgres";
        // SAFETY: getpwnam takes a NUL-terminated name and returns a pointer
        // into static storage, or null; it is read at once, before any other
        // call that could overwrite it.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if entry.is_null() {
            return Err(Error::Setup(
                "running as root, and there is no `postgres` system user to run the server as \
                 (initdb and postgres refuse to run as root); install the `postgresql` package \
                 or run the tests as an ordinary user"
                    .into(),
            ));
        }
        // SAFETY: checked non-null above.
        let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
        Ok(Some(RunAs { uid, gid }))
    }

    fn chown(self, path: &Path) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
    }

    fn apply(self, command: &mut Command) {
        command.uid(self.uid).gid(self.gid);
    }
}

/// Options for [`TestServer::spawn_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Extra `-c name=value` settings passed to `postgres`.
    pub settings: Vec<(String, String)>,
}

impl ServerOptions {
    /// Adds one server setting, as `postgres -c name=value` would.
    #[must_use]
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// A PostgreSQL server that lives as long as this value (or, for
/// [`TestServer::shared`], as long as the test process).
///
/// It listens on `127.0.0.1` on a port chosen at start and kept across
/// [`stop`](Self::stop)/[`start`](Self::start)/[`restart`](Self::restart)/
/// [`kill`](Self::kill), so clients can reconnect to the same address. TLS is
/// on (a self-signed certificate made at start, see
/// [`ca_certificate_pem`](Self::ca_certificate_pem)); plain connections are
/// accepted too. The superuser [`SUPERUSER`] has a random password; local
/// socket connections need none.
///
/// Whatever happens to the test process, a small watchdog process kills the
/// server and removes its directory once the process is gone.
#[derive(Debug)]
pub struct TestServer {
    dir: PathBuf,
    port: u16,
    password: String,
    ca_pem: String,
    bin: PathBuf,
    run_as: Option<RunAs>,
    settings: Vec<(String, String)>,
    postmaster: ChildSlot,
}

impl TestServer {
    /// The server shared by every test of this process, started on first use.
    ///
    /// Tests that stop, restart or kill a server must [`spawn`](Self::spawn)
    /// their own instead.
    ///
    /// # Panics
    /// When the server cannot be started: the message says why (for instance
    /// that no PostgreSQL binaries are installed, and how to install them).
    pub fn shared() -> &'static TestServer {
        static SHARED: OnceLock<TestServer> = OnceLock::new();
        SHARED.get_or_init(|| match TestServer::spawn() {
            Ok(server) => server,
            Err(error) => panic!("{error}"),
        })
    }

    /// Starts a new server with default options.
    ///
    /// # Errors
    /// [`Error::NoBinaries`] when PostgreSQL is not installed, [`Error::Setup`]
    /// or [`Error::Io`] when `initdb` or `postgres` fail (with their output).
    pub fn spawn() -> Result<TestServer, Error> {
        Self::spawn_with(ServerOptions::default())
    }

    /// Starts a new server with extra settings.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn).
    pub fn spawn_with(options: ServerOptions) -> Result<TestServer, Error> {
        let bin = binaries::locate()?;
        let run_as = RunAs::detect()?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pgorm-testkit-{}-{id}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        if let Some(run_as) = run_as {
            run_as.chown(&dir)?;
        }
        spawn_watchdog(&dir)?;

        let password = random_token();
        let pwfile = dir.join("pwfile");
        write_owned(&pwfile, password.as_bytes(), run_as)?;
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        if let Some(run_as) = run_as {
            run_as.apply(&mut initdb);
        }
        let output = initdb.stdin(Stdio::null()).output()?;
        if !output.status.success() {
            return Err(Error::Setup(format!(
                "initdb failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }

        let ca_pem =
            crate::tls::write_certificates(&dir, |path, bytes| write_owned(path, bytes, run_as))?;

        let mut last_error = None;
        // A free port is found by binding port 0; another process can take it
        // before postgres binds it, so a failed start is retried on a new port.
        for _ in 0..5 {
            let port = free_port()?;
            let server = TestServer {
                dir: dir.clone(),
                port,
                password: password.clone(),
                ca_pem: ca_pem.clone(),
                bin: bin.clone(),
                run_as,
                settings: options.settings.clone(),
                postmaster: ChildSlot::default(),
            };
            match server.start() {
                Ok(()) => return Ok(server),
                Err(error) => {
                    // Keep the directory for the next try.
                    std::mem::forget(server);
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Setup("the server did not start".into())))
    }

    /// The TCP port on 127.0.0.1, the same for the server's whole life.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A connection URL for `database` as the superuser, over TCP.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// A connection URL for the `postgres` database as the superuser.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The PEM certificate of the authority that signed the server's TLS
    /// certificate (valid for `localhost` and `127.0.0.1`).
    pub fn ca_certificate_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The directory of the server's Unix socket (`host=` in a connection
    /// string). Local connections need no password.
    pub fn socket_directory(&self) -> &Path {
        &self.dir
    }

    /// The server's log file (useful in failure messages).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Creates a fresh, uniquely named database and returns its URL, so tests
    /// of one process can share the server without seeing each other's data.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses the statement.
    pub async fn create_database(&self) -> Result<String, Error> {
        static NEXT_DB: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .map_err(Error::Postgres)?;
        let task = tokio::spawn(connection);
        let result = client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await;
        drop(client);
        let _ = task.await;
        result.map_err(Error::Postgres)?;
        Ok(self.url_for(&name))
    }

    /// Starts the server again after [`stop`](Self::stop) or
    /// [`kill`](Self::kill), on the same port and data directory, and waits
    /// until it accepts connections. Does nothing if it is running.
    ///
    /// # Errors
    /// When `postgres` exits or is not ready within a minute.
    pub fn start(&self) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.start_once() {
                // After a kill, orphaned backends hold the old shared memory
                // until they notice the postmaster died; postgres refuses to
                // start until then.
                Err(Error::Setup(message))
                    if message.contains("pre-existing shared memory block")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn start_once(&self) -> Result<(), Error> {
        let mut postmaster = self.postmaster.lock();
        if let Some(child) = postmaster.as_mut() {
            if child.try_wait()?.is_none() {
                return Ok(());
            }
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let log_start = log.metadata()?.len();
        if let Some(run_as) = self.run_as {
            run_as.chown(&self.log_path())?;
        }
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .args(["-c", "ssl=on"])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                self.dir.join("server.crt").display()
            ))
            .arg("-c")
            .arg(format!(
                "ssl_key_file={}",
                self.dir.join("server.key").display()
            ));
        for (name, value) in &self.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        if let Some(run_as) = self.run_as {
            run_as.apply(&mut command);
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = command.spawn()?;

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(Error::Setup(format!(
                    "postgres exited with {status} before it was ready; its log says:\n{}",
                    self.log_since(log_start)
                )));
            }
            if self.postmaster_ready(child.id()) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Setup(format!(
                    "postgres was not ready within {READY_TIMEOUT:?}; its log says:\n{}",
                    self.log_since(log_start)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *postmaster = Some(child);
        Ok(())
    }

    /// Stops the server with a fast shutdown (open sessions are terminated,
    /// as when an operator stops the service) and waits for it to exit.
    ///
    /// # Errors
    /// When the process cannot be signalled or does not exit in time.
    pub fn stop(&self) -> Result<(), Error> {
        self.signal_and_wait(libc::SIGINT)
    }

    /// Kills the postmaster with SIGKILL, as a crash or an OOM kill would.
    /// Its backends notice and exit on their own. Call
    /// [`start`](Self::start) to bring the server back (it runs crash
    /// recovery).
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

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.postmaster.is_running()
    }

    fn signal_and_wait(&self, signal: libc::c_int) -> Result<(), Error> {
        self.postmaster.signal_and_wait(signal, "postgres")
    }

    /// The postmaster writes its pid as the first line of `postmaster.pid`
    /// and `ready` as the status line once it accepts connections. The pid
    /// is checked because a killed postmaster leaves its file behind.
    fn postmaster_ready(&self, pid: u32) -> bool {
        fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .map(|text| {
                let lines: Vec<&str> = text.lines().map(str::trim).collect();
                lines.first() == Some(&pid.to_string().as_str()) && lines.get(7) == Some(&"ready")
            })
            .unwrap_or(false)
    }

    fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.log_path()) {
            let _ = file.seek(SeekFrom::Start(offset));
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Immediate shutdown: nothing of a throwaway server is worth saving.
        let _ = self.signal_and_wait(libc::SIGQUIT);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts a detached shell that waits for this process to end, then kills
/// whatever server still runs from `dir` and removes `dir`. Statics are never
/// dropped and a test process can die of a signal: this covers both.
fn spawn_watchdog(dir: &Path) -> Result<(), Error> {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
        pidfile="$2/data/postmaster.pid"
        if [ -f "$pidfile" ]; then
            pid=$(head -n 1 "$pidfile")
            kill -QUIT "$pid" 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.5
            done
            kill -KILL "$pid" 2>/dev/null
        fi
        rm -rf "$2"
    "#;
    let mut command = Command::new("sh");
    command
        .args(["-c", script, "pgorm-testkit-watchdog"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own process group, so a Ctrl-C aimed at the tests does not kill the
    // watchdog before it has cleaned up.
    command.process_group(0);
    command.spawn()?;
    Ok(())
}

fn write_owned(path: &Path, bytes: &[u8], run_as: Option<RunAs>) -> io::Result<()> {
    fs::write(path, bytes)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    if let Some(run_as) = run_as {
        run_as.chown(path)?;
    }
    Ok(())
}

/// 32 hex characters from the kernel's random source.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let filled = fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes));
    if filled.is_err() {
        // Not secret in any real sense: only has to differ between servers.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = (nanos ^ u128::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

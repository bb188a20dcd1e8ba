//! The child process of a throwaway server: its slot, signals, and a free
//! loopback port. Shared by the PostgreSQL and NATS servers.

use std::io;
use std::process::Child;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::Error;

/// How long a signalled server may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The running server process, if any.
#[derive(Debug, Default)]
pub(crate) struct ChildSlot(Mutex<Option<Child>>);

impl ChildSlot {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the process runs.
    pub(crate) fn is_running(&self) -> bool {
        match self.lock().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `signal` and waits for the process to exit; past
    /// [`STOP_TIMEOUT`] it is killed and `name` is named in the error.
    pub(crate) fn signal_and_wait(&self, signal: libc::c_int, name: &str) -> Result<(), Error> {
        let mut slot = self.lock();
        let Some(mut child) = slot.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|_| Error::Setup(format!("{name} pid out of range")))?;
        // SAFETY: kill(2) has no memory-safety preconditions; pid is our
        // child, not reaped yet.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(Error::Io(io::Error::last_os_error()));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Setup(format!(
                    "{name} did not exit within {STOP_TIMEOUT:?} of signal {signal}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A port nobody listens on now, on the loopback interface.
pub(crate) fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

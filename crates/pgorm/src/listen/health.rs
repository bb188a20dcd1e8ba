//! The health check of a connected session: an empty statement every
//! interval that must be answered within a timeout, which finds dead network
//! paths long before TCP would.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::error::OrmError;
use crate::listen::driver::DriverShared;
use crate::listen::session::{OperationKind, Session};

/// The operation a missed health check reports as timed out.
pub(super) const HEALTH_CHECK: &str = "listener health check";

/// Where a session's health check stands.
pub(super) enum Health {
    /// Waiting for the next check.
    Idle(Pin<Box<Sleep>>),
    /// A check is in flight and must answer by this deadline.
    Checking(Pin<Box<Sleep>>),
}

impl Health {
    pub(super) fn new(interval: Duration) -> Self {
        Health::Idle(Box::pin(tokio::time::sleep(interval)))
    }
}

/// How often to check, and how long a check may take.
#[derive(Debug, Clone, Copy)]
pub(super) struct HealthCheck {
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
}

impl HealthCheck {
    /// Takes the result of a check that finished, starts a check when one is
    /// due, and says why the session is lost when a check failed or missed
    /// its deadline. While `paused` (a blocked queue keeps the driver from
    /// reading: a slow consumer is not a dead server) a deadline is pushed
    /// back instead.
    pub(super) fn poll(
        &self,
        session: &mut Session,
        shared: &DriverShared,
        finished: Option<Result<(), tokio_postgres::Error>>,
        paused: bool,
        cx: &mut Context<'_>,
    ) -> Option<OrmError> {
        match finished {
            Some(Err(error)) => return Some(OrmError::connection(error)),
            Some(Ok(())) => session.health = Health::new(self.interval),
            None => {}
        }
        if paused {
            if let Health::Checking(deadline) = &mut session.health {
                deadline.as_mut().reset(Instant::now() + self.timeout);
            }
            return None;
        }
        match &mut session.health {
            Health::Idle(next) => {
                if next.as_mut().poll(cx).is_ready() {
                    session.health = Health::Checking(Box::pin(tokio::time::sleep(self.timeout)));
                    session.start(String::new(), OperationKind::Health);
                    // Poll the new statement (sends it) and arm the deadline.
                    let finished = session.poll_operations(shared, cx);
                    return self.poll(session, shared, finished, paused, cx);
                }
            }
            Health::Checking(deadline) => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Some(OrmError::Timeout {
                        operation: HEALTH_CHECK,
                        after: self.timeout,
                    });
                }
            }
        }
        None
    }
}

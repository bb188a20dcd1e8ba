//! The health check of a connected session: an empty statement every
//! interval that must be answered within a timeout, which finds dead network
//! paths long before TCP would.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::error::OrmError;

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

/// What a poll of the health check asks of the driver.
pub(super) enum Check {
    /// Nothing now.
    Wait,
    /// A check is due: send an empty statement, then poll again.
    Start,
    /// The session is lost: a check failed or missed its deadline.
    Lost(OrmError),
}

impl HealthCheck {
    /// Takes the result of a check that finished (`finished`), and says
    /// whether a check is due or the session is lost. While `paused` (a
    /// blocked queue keeps the driver from reading: a slow consumer is not a
    /// dead server) a deadline is pushed back instead.
    pub(super) fn poll(
        &self,
        health: &mut Health,
        finished: Option<Result<(), tokio_postgres::Error>>,
        paused: bool,
        cx: &mut Context<'_>,
    ) -> Check {
        match finished {
            Some(Err(error)) => return Check::Lost(OrmError::connection(error)),
            Some(Ok(())) => *health = Health::new(self.interval),
            None => {}
        }
        if paused {
            if let Health::Checking(deadline) = health {
                deadline.as_mut().reset(Instant::now() + self.timeout);
            }
            return Check::Wait;
        }
        match health {
            Health::Idle(next) => {
                if next.as_mut().poll(cx).is_ready() {
                    *health = Health::Checking(Box::pin(tokio::time::sleep(self.timeout)));
                    return Check::Start;
                }
            }
            Health::Checking(deadline) => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Check::Lost(OrmError::Timeout {
                        operation: HEALTH_CHECK,
                        after: self.timeout,
                    });
                }
            }
        }
        Check::Wait
    }
}

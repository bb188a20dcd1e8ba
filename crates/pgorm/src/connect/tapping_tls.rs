//! A TLS connector that puts a [`TapStream`] above the TLS stream, so that
//! notifications are lifted from the decrypted bytes while tokio-postgres'
//! own connect runs unchanged (every host, every setting).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

use crate::tap::{NotificationTap, TapStream};

/// Wraps a [`MakeTlsConnect`]: every TLS stream it makes is tapped, all
/// into one [`NotificationTap`] (one connect makes one session; hosts that
/// fail on the way never listened, so they lift nothing).
pub(crate) struct TappingTls<T> {
    inner: T,
    tap: Arc<NotificationTap>,
}

impl<T> TappingTls<T> {
    pub(crate) fn new(inner: T, tap: Arc<NotificationTap>) -> Self {
        TappingTls { inner, tap }
    }
}

impl<S, T: MakeTlsConnect<S>> MakeTlsConnect<S> for TappingTls<T> {
    type Stream = TapStream<T::Stream>;
    type TlsConnect = TappingTlsConnect<T::TlsConnect>;
    type Error = T::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(TappingTlsConnect {
            inner: self.inner.make_tls_connect(domain)?,
            tap: self.tap.clone(),
        })
    }
}

/// The [`TlsConnect`] of [`TappingTls`]: the inner handshake, then the tap.
pub(crate) struct TappingTlsConnect<C> {
    inner: C,
    tap: Arc<NotificationTap>,
}

impl<S, C: TlsConnect<S>> TlsConnect<S> for TappingTlsConnect<C> {
    type Stream = TapStream<C::Stream>;
    type Error = C::Error;
    type Future = Handshake<C::Future>;

    fn connect(self, stream: S) -> Self::Future {
        Handshake {
            inner: self.inner.connect(stream),
            tap: self.tap,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner TLS handshake; its stream comes out tapped.
    pub(crate) struct Handshake<F> {
        #[pin]
        inner: F,
        tap: Arc<NotificationTap>,
    }
}

impl<F, S, E> Future for Handshake<F>
where
    F: Future<Output = Result<S, E>>,
{
    type Output = Result<TapStream<S>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let stream = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(TapStream::new(stream, this.tap.clone())))
    }
}

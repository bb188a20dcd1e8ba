//! TLS through rustls (feature `rustls`): a ready connector for
//! [`PgClient::connect_with_tls`](crate::PgClient::connect_with_tls) and, with
//! the `listen` feature, for listeners.
//!
//! ```no_run
//! # async fn run() -> pgorm::OrmResult<()> {
//! use pgorm::{tls, PgClient, PoolConfig};
//!
//! let ca_pem = std::fs::read("/etc/ssl/my-db-ca.pem").expect("CA file");
//! let tls = tls::rustls_connector_with_pem_roots(&ca_pem)?;
//! let client = PgClient::connect_with_tls(
//!     "postgres://app@db.internal/app?sslmode=require",
//!     PoolConfig::default(),
//!     tls,
//! )
//! .await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

pub use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{OrmResult, ValidationError};

/// Wraps a rustls client configuration as a tokio-postgres TLS connector.
pub fn rustls_connector(config: rustls::ClientConfig) -> MakeRustlsConnect {
    MakeRustlsConnect::new(config)
}

/// A connector that trusts only the certificate authorities in `pem` (one or
/// more PEM certificates), with the ring crypto provider.
///
/// # Errors
/// [`OrmError::Validation`](crate::OrmError::Validation) when `pem` holds no
/// certificate or one that cannot be used as a trust anchor.
pub fn rustls_connector_with_pem_roots(pem: &[u8]) -> OrmResult<MakeRustlsConnect> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    let invalid = |reason: String| ValidationError::Setting {
        setting: "tls root certificates",
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let certificate = certificate.map_err(|error| invalid(error.to_string()))?;
        roots
            .add(certificate)
            .map_err(|error| invalid(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no PEM certificate found".into()).into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(rustls_connector(config))
}

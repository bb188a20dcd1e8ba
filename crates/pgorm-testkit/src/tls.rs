//! The throwaway server's TLS material: a certificate authority made at start
//! and a server certificate it signs for `localhost` and `127.0.0.1`.

use std::io;
use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::Error;

/// Writes `server.crt` and `server.key` into `dir` with `write`, and returns
/// the authority's certificate as PEM for clients to trust.
pub(crate) fn write_certificates(
    dir: &Path,
    write: impl Fn(&Path, &[u8]) -> io::Result<()>,
) -> Result<String, Error> {
    let setup = |error: rcgen::Error| Error::Setup(format!("making TLS certificates: {error}"));

    let ca_key = KeyPair::generate().map_err(setup)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(setup)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pgorm-testkit CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(setup)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(setup)?;
    let server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(setup)?;
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(setup)?;

    write(&dir.join("server.crt"), server_cert.pem().as_bytes())?;
    write(
        &dir.join("server.key"),
        server_key.serialize_pem().as_bytes(),
    )?;
    Ok(ca_cert.pem())
}

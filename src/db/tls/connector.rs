//! The rustls connector tokio-postgres is given: the TLS handshake over tokio-rustls and the
//! `tls-server-end-point` channel binding SCRAM-SHA-256-PLUS uses.
//!
//! Written here rather than taken from tokio-postgres-rustls, which reads the certificate's
//! signature algorithm with a second DER stack (x509-cert on der 0.7, beside the der 0.8 of
//! the p256 signer): x509-parser, which reads issuer certificates already, does that job.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use x509_parser::oid_registry::{
    Oid, OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Makes a TLS connection per Postgres host with one rustls configuration.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
}

impl MakeRustlsConnect {
    pub fn new(config: ClientConfig) -> Self {
        MakeRustlsConnect { config: Arc::new(config) }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, Self::Error> {
        // The host is checked as a server name only when TLS is used: the driver asks for a
        // connector for every host, a Unix socket directory included.
        Ok(RustlsConnect { host: host.to_owned(), connector: TlsConnector::from(self.config.clone()) })
    }
}

/// One host's handshake.
pub struct RustlsConnect {
    host: String,
    connector: TlsConnector,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok(RustlsStream(self.connector.connect(name, stream).await?))
        })
    }
}

/// An established TLS connection to Postgres.
pub struct RustlsStream<S>(TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| server_end_point(leaf))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// RFC 5929 section 4.1 `tls-server-end-point`: the server certificate hashed with its
/// signature's hash, SHA-1 raised to SHA-256. `None` (no channel binding, plain SCRAM) for a
/// signature that names no single hash (RSA-PSS, Ed25519) or a certificate this cannot read.
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    let algorithm: &Oid = &parsed.signature_algorithm.algorithm;
    let is = |oids: &[Oid]| oids.contains(algorithm);
    if is(&[OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA, OID_SIG_ECDSA_WITH_SHA256]) {
        Some(Sha256::digest(cert).to_vec())
    } else if is(&[OID_PKCS1_SHA384WITHRSA, OID_SIG_ECDSA_WITH_SHA384]) {
        Some(Sha384::digest(cert).to_vec())
    } else if is(&[OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA512]) {
        Some(Sha512::digest(cert).to_vec())
    } else {
        None
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_end_point_hashes_the_certificate_with_its_signature_hash() {
        // ecdsa-with-SHA256 (tests/fixtures/README.md).
        let cert = include_bytes!("../../../tests/fixtures/unit-ca.der");
        assert_eq!(server_end_point(cert), Some(Sha256::digest(cert).to_vec()));
        // Not a certificate: no binding, so SCRAM goes on without one rather than failing.
        assert_eq!(server_end_point(b"\x30\x03\x02\x01\x01"), None);
    }
}

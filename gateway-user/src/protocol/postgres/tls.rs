//! TLS on the upstream leg. PostgreSQL negotiates it in-band: an SSLRequest, one byte of
//! answer ('S' or 'N'), then the handshake on the same connection. The modes mean what
//! libpq's `sslmode` means: `require` encrypts without checking who answers, `verify-full`
//! checks the certificate chain against the configured CA and the name against the target.

use std::{path::Path, sync::Arc};

use bytes::BytesMut;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_util::either::Either;

use super::{config::TlsMode, upstream::UpstreamError};

/// The upstream connection, encrypted or not.
pub type UpstreamIo = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Negotiates TLS as the target's mode asks. `server_name` is the host the policy names
/// (a DNS name or an IP address), checked against the certificate in `verify-full`.
pub async fn negotiate(
    mut tcp: TcpStream,
    mode: TlsMode,
    ca_file: Option<&Path>,
    server_name: &str,
) -> Result<UpstreamIo, UpstreamError> {
    if mode == TlsMode::Disable {
        return Ok(Either::Left(tcp));
    }
    let mut req = BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut req);
    tcp.write_all(&req).await?;
    match tcp.read_u8().await? {
        b'S' => {}
        b'N' => {
            return Err(UpstreamError::Tls(
                "the upstream does not accept TLS, and the policy requires it".into(),
            ));
        }
        b => {
            return Err(UpstreamError::Protocol(format!(
                "unexpected answer {:?} to SSLRequest",
                b as char
            )));
        }
    }
    let config = client_config(mode, ca_file)?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| UpstreamError::Tls(format!("server name {server_name:?}: {e}")))?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok(Either::Right(Box::new(tls)))
}

fn client_config(mode: TlsMode, ca_file: Option<&Path>) -> Result<ClientConfig, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let config = match mode {
        TlsMode::VerifyFull => {
            let path =
                ca_file.ok_or_else(|| UpstreamError::Tls("verify-full needs ca_file".into()))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| UpstreamError::Tls(format!("{}: {e}", path.display())))?
            {
                let cert =
                    cert.map_err(|e| UpstreamError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| UpstreamError::Tls(format!("{}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
        TlsMode::Disable => unreachable!("no TLS to configure"),
    };
    Ok(config)
}

/// `require`: the handshake's signatures are still checked, the certificate's issuer and
/// name are not (libpq's `sslmode=require`).
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

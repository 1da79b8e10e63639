//! TLS on the upstream leg, for every protocol that has it: the modes mean what libpq's
//! `sslmode` means (`require` encrypts without checking who answers, `verify-full` checks the
//! chain against the configured CA and the name against the target). One rustls client
//! config per target, built off the async workers and kept until the CA file changes.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream TLS: {0}")]
pub struct TlsError(pub String);

/// A target's upstream TLS settings with the client config built from them.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub mode: TlsMode,
    pub ca_file: Option<PathBuf>,
    cached: Arc<Mutex<Option<Cached>>>,
}

#[derive(Debug)]
struct Cached {
    /// The CA file's modification time and length when the config was built: a rotated CA
    /// (replaced or rewritten) is read again at the next session.
    stamp: Option<(SystemTime, u64)>,
    config: Arc<ClientConfig>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.ca_file == other.ca_file
    }
}

impl UpstreamTls {
    pub fn new(mode: TlsMode, ca_file: Option<PathBuf>) -> Result<UpstreamTls, String> {
        match (mode, &ca_file) {
            (TlsMode::VerifyFull, None) => {
                return Err("tls = \"verify-full\" needs `ca_file`".into());
            }
            (TlsMode::Disable | TlsMode::Require, Some(_)) => {
                return Err("`ca_file` is only used with tls = \"verify-full\"".into());
            }
            _ => {}
        }
        Ok(UpstreamTls {
            mode,
            ca_file,
            cached: Arc::default(),
        })
    }

    /// The client config for a session, None when TLS is disabled. File reads (a stat per
    /// session, the CA when it changed) happen on the blocking pool.
    pub async fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, TlsError> {
        if self.mode == TlsMode::Disable {
            return Ok(None);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.current().map(Some))
            .await
            .map_err(|e| TlsError(format!("building the client config: {e}")))?
    }

    fn current(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let stamp = self.ca_file.as_deref().map(stamp).transpose()?;
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref().filter(|c| c.stamp == stamp) {
            return Ok(c.config.clone());
        }
        let config = Arc::new(client_config(self.mode, self.ca_file.as_deref())?);
        *cached = Some(Cached {
            stamp,
            config: config.clone(),
        });
        Ok(config)
    }
}

/// The name a certificate is checked against: the host the policy names, or the address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned())
        .map_err(|e| TlsError(format!("server name {name:?}: {e}")))
}

fn stamp(path: &Path) -> Result<(SystemTime, u64), TlsError> {
    let m = std::fs::metadata(path).map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    Ok((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

fn client_config(mode: TlsMode, ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let config = match mode {
        TlsMode::VerifyFull => {
            let path = ca_file.ok_or_else(|| TlsError("verify-full needs ca_file".into()))?;
            let bad = |e: &dyn std::fmt::Display| TlsError(format!("{}: {e}", path.display()));
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
        TlsMode::Disable => return Err(TlsError("TLS is disabled for this target".into())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_config_until_the_ca_changes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "").unwrap();
        let tls = UpstreamTls::new(TlsMode::VerifyFull, Some(ca.clone())).unwrap();
        let a = tls.client_config().await.unwrap().unwrap();
        let b = tls.client_config().await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "built once");
        // The CA file changes: the next session gets a config built from it.
        std::fs::write(&ca, "\n\n").unwrap();
        let c = tls.client_config().await.unwrap().unwrap();
        assert!(!Arc::ptr_eq(&b, &c), "rebuilt after the CA changed");
        std::fs::remove_file(&ca).unwrap();
        let e = tls.client_config().await.unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
        let off = UpstreamTls::new(TlsMode::Disable, None).unwrap();
        assert!(matches!(off.client_config().await, Ok(None)));
        assert!(UpstreamTls::new(TlsMode::VerifyFull, None).is_err());
        assert!(UpstreamTls::new(TlsMode::Require, Some(ca)).is_err());
    }
}

//! The daemon's SSH host certificate authority. Agents dial the real host and the daemon
//! answers as that host; they trust it through one host-level line in
//! /etc/ssh/ssh_known_hosts (`@cert-authority * <CA key>`), never a change to the agent. The CA
//! key is made on first start (root's, mode 0600); each connection gets a host certificate
//! whose principals are the address the agent dialled and the target's host name.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use ring::rand::{SecureRandom as _, SystemRandom};
use russh::keys::{
    Certificate, PrivateKey, PublicKey,
    ssh_key::{
        LineEnding,
        certificate::{Builder, CertType},
        private::Ed25519Keypair,
    },
};

/// How long a minted host certificate is valid: the connection's start is what it vouches for,
/// with room for clocks a little apart.
const HOST_CERT_BEFORE: Duration = Duration::from_secs(5 * 60);
const HOST_CERT_AFTER: Duration = Duration::from_secs(24 * 3600);

pub struct HostCa {
    ca: PrivateKey,
    /// This run's host key; certificates bind it to the dialled names.
    host: PrivateKey,
}

impl HostCa {
    /// Reads the CA key at `path`, or makes one there (and its `.pub`) if there is none.
    pub fn load_or_create(path: &Path) -> Result<HostCa, String> {
        let what = |e: &dyn std::fmt::Display| format!("SSH host CA {}: {e}", path.display());
        let ca = match std::fs::metadata(path) {
            Ok(m) => {
                if m.permissions().mode() & 0o077 != 0 {
                    return Err(what(&format_args!(
                        "mode {:o} lets others read it; it must be 0600",
                        m.permissions().mode() & 0o777
                    )));
                }
                PrivateKey::read_openssh_file(path).map_err(|e| what(&e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ed25519()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| what(&e))?;
                }
                let pem = key.to_openssh(LineEnding::LF).map_err(|e| what(&e))?;
                // Created 0600 with O_EXCL: never readable by anyone else, even for a moment.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| what(&e))?;
                f.write_all(pem.as_bytes()).map_err(|e| what(&e))?;
                f.sync_all().map_err(|e| what(&e))?;
                let public = key.public_key().to_openssh().map_err(|e| what(&e))?;
                std::fs::write(pub_path(path), format!("{public} gatewayd-host-ca\n"))
                    .map_err(|e| what(&e))?;
                tracing::info!(path = %path.display(), "SSH host CA created");
                key
            }
            Err(e) => return Err(what(&e)),
        };
        Ok(HostCa {
            ca,
            host: ed25519()?,
        })
    }

    /// The line for /etc/ssh/ssh_known_hosts that makes OpenSSH trust the daemon's hosts.
    pub fn known_hosts_line(&self) -> Result<String, String> {
        known_hosts_line(
            &self
                .ca
                .public_key()
                .to_openssh()
                .map_err(|e| e.to_string())?,
        )
    }

    pub fn host_key(&self) -> &PrivateKey {
        &self.host
    }

    /// A host certificate for this connection, valid for `principals`.
    pub fn certificate(&self, principals: &[String]) -> Result<Certificate, String> {
        let now = SystemTime::now();
        sign(
            &self.ca,
            self.host.public_key(),
            CertType::Host,
            "gatewayd",
            principals,
            (now - HOST_CERT_BEFORE, now + HOST_CERT_AFTER),
            &[],
        )
    }
}

/// A certificate for `key` signed by `ca`, with a random nonce and serial.
pub fn sign(
    ca: &PrivateKey,
    key: &PublicKey,
    kind: CertType,
    key_id: &str,
    principals: &[String],
    (from, until): (SystemTime, SystemTime),
    extensions: &[&str],
) -> Result<Certificate, String> {
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let mut b = Builder::new(
        random::<32>()?.to_vec(),
        key.key_data().clone(),
        secs(from),
        secs(until),
    )
    .map_err(|e| e.to_string())?;
    b.serial(u64::from_be_bytes(random::<8>()?))
        .and_then(|b| b.key_id(key_id))
        .and_then(|b| b.cert_type(kind))
        .map_err(|e| e.to_string())?;
    for p in principals {
        b.valid_principal(p.clone()).map_err(|e| e.to_string())?;
    }
    for x in extensions {
        b.extension(*x, "").map_err(|e| e.to_string())?;
    }
    b.sign(ca).map_err(|e| e.to_string())
}

/// `@cert-authority * <key>` from the CA's public key line.
pub fn known_hosts_line(public: &str) -> Result<String, String> {
    let mut parts = public.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(alg), Some(key)) => Ok(format!("@cert-authority * {alg} {key} gatewayd-host-ca")),
        _ => Err(format!("not an OpenSSH public key: {public:?}")),
    }
}

/// Where the CA's public key is written, readable by anyone (`gatewayctl ssh known-hosts`).
pub fn pub_path(ca: &Path) -> PathBuf {
    let mut p = ca.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// A fresh Ed25519 key from the kernel's CSPRNG.
pub fn ed25519() -> Result<PrivateKey, String> {
    Ok(PrivateKey::from(
        Ed25519Keypair::from_seed(&random::<32>()?),
    ))
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "the system's random source failed".to_owned())?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_and_signs_what_it_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca");
        let ca = HostCa::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let line = ca.known_hosts_line().unwrap();
        assert!(
            line.starts_with("@cert-authority * ssh-ed25519 AAAA"),
            "{line}"
        );
        let published = std::fs::read_to_string(pub_path(&path)).unwrap();
        assert_eq!(known_hosts_line(&published).unwrap(), line);
        // The same CA after a restart; a new host key each run.
        let again = HostCa::load_or_create(&path).unwrap();
        assert_eq!(again.known_hosts_line().unwrap(), line);
        assert_ne!(again.host.public_key(), ca.host.public_key());

        let cert = ca
            .certificate(&["127.10.0.5".into(), "db.internal".into()])
            .unwrap();
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.valid_principals(), ["127.10.0.5", "db.internal"]);
        assert_eq!(cert.signature_key(), ca.ca.public_key().key_data());
        assert_eq!(cert.public_key(), ca.host.public_key().key_data());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = HostCa::load_or_create(&path).err().unwrap();
        assert!(e.contains("0600"), "{e}");
    }
}

//! The secrets the daemon logs in upstream with: a file only it can read, or a variable of its
//! service environment. Read at each use, on the blocking pool, so a rotated secret needs no
//! reload and a slow disk never stalls the async workers. Never logged, audited or sent to an
//! agent; errors name where the secret was looked for, which only the daemon's log shows.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    File(PathBuf),
    Env(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the target has no credential configured")]
    NotConfigured,
    #[error("{0}")]
    Unreadable(String),
}

impl Credential {
    /// From a target's two optional settings (`password_file`, `password_env` or their
    /// protocol's names): at most one.
    pub fn from_settings(
        file: Option<PathBuf>,
        env: Option<String>,
    ) -> Result<Credential, &'static str> {
        match (file, env) {
            (Some(_), Some(_)) => Err("set one of `password_file` and `password_env`, not both"),
            (Some(f), None) => Ok(Credential::File(f)),
            (None, Some(v)) => Ok(Credential::Env(v)),
            (None, None) => Ok(Credential::None),
        }
    }

    pub fn is_configured(&self) -> bool {
        *self != Credential::None
    }

    /// The secret, read now, off the async workers.
    pub async fn read(&self) -> Result<Vec<u8>, CredentialError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking())
            .await
            .map_err(|e| CredentialError::Unreadable(format!("reading the credential: {e}")))?
    }

    pub fn read_blocking(&self) -> Result<Vec<u8>, CredentialError> {
        match self {
            Credential::None => Err(CredentialError::NotConfigured),
            Credential::File(path) => std::fs::read(path)
                .map(|mut v| {
                    // A trailing newline is how editors end files, not part of the secret.
                    while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        v.pop();
                    }
                    v
                })
                .map_err(|e| CredentialError::Unreadable(format!("{}: {e}", path.display()))),
            Credential::Env(var) => std::env::var(var)
                .map(String::into_bytes)
                .map_err(|_| CredentialError::Unreadable(format!("${var} is not set"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_at_each_use_so_rotation_needs_no_reload() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "first\n").unwrap();
        let c = Credential::from_settings(Some(file.clone()), None).unwrap();
        assert_eq!(c.read().await.unwrap(), b"first");
        std::fs::write(&file, "second\r\n").unwrap();
        assert_eq!(c.read().await.unwrap(), b"second");
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            c.read().await,
            Err(CredentialError::Unreadable(e)) if e.contains("pw")
        ));
        assert_eq!(
            Credential::None.read().await,
            Err(CredentialError::NotConfigured)
        );
        assert!(Credential::from_settings(Some(file), Some("X".into())).is_err());
    }
}

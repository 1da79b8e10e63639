//! Agent tokens. A target may require the agent to present a JWT (PostgreSQL reads it as the
//! password, in clear on the loopback leg, which never leaves the host; SSH and HTTP carry it
//! their own ways); it is verified against configured keys
//! with issuer, audience and expiry checked, and its subject and groups go into the audit and
//! the rules.

use std::{path::PathBuf, sync::Arc};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, JwkSet},
};
use serde::{Deserialize, Serialize};

use super::Who;

/// Why a token was not accepted, as the agent and the audit read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(String);

impl From<String> for TokenError {
    fn from(s: String) -> Self {
        TokenError(s)
    }
}

impl From<&str> for TokenError {
    fn from(s: &str) -> Self {
        TokenError(s.to_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    pub issuer: String,
    pub audience: String,
    /// A PEM public key, or a JWKS document (keys chosen by the token's `kid`).
    pub key_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// The claim that lists the agent's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::ES256]
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// What a verified token says, as the audit keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIdentity {
    pub subject: String,
    pub issuer: String,
    pub groups: Vec<String>,
}

impl TokenIdentity {
    pub fn who(&self) -> Who {
        Who {
            subject: Some(self.subject.clone()),
            groups: self.groups.clone(),
        }
    }
}

enum Keys {
    One(DecodingKey),
    Set(JwkSet),
}

/// Keys loaded once, when the policy is; a rotated key takes a reload.
#[derive(Clone)]
pub struct JwtVerifier {
    config: JwtFile,
    keys: Arc<Keys>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("config", &self.config)
            .finish()
    }
}

impl PartialEq for JwtVerifier {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl JwtVerifier {
    pub fn load(config: JwtFile) -> Result<JwtVerifier, TokenError> {
        if config.algorithms.is_empty() {
            return Err("agent_jwt.algorithms must not be empty".into());
        }
        if config
            .algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(
                "agent_jwt: shared-secret (HS*) algorithms are not accepted; use public keys"
                    .into(),
            );
        }
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| format!("agent_jwt: {}: {e}", p.display()));
        let keys = match (&config.key_file, &config.jwks_file) {
            (Some(pem), None) => {
                let bytes = read(pem)?;
                let key = match config.algorithms[0] {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&bytes),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&bytes),
                    _ => DecodingKey::from_rsa_pem(&bytes),
                }
                .map_err(|e| format!("agent_jwt: {}: {e}", pem.display()))?;
                Keys::One(key)
            }
            (None, Some(jwks)) => Keys::Set(
                serde_json::from_slice(&read(jwks)?)
                    .map_err(|e| format!("agent_jwt: {}: {e}", jwks.display()))?,
            ),
            _ => return Err("agent_jwt needs exactly one of `key_file` and `jwks_file`".into()),
        };
        Ok(JwtVerifier {
            config,
            keys: Arc::new(keys),
        })
    }

    pub fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg).into());
        }
        let owned;
        let key = match &*self.keys {
            Keys::One(k) => k,
            Keys::Set(set) => {
                let kid = header.kid.as_deref().ok_or("the token has no `kid`")?;
                let jwk = set
                    .find(kid)
                    .ok_or_else(|| format!("no key {kid:?} in the JWKS"))?;
                if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                    return Err("shared-secret keys are not accepted".into());
                }
                owned = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
                &owned
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .map_err(|e| e.to_string())?;
        let claims = data.claims;
        let groups = match &claims[self.config.groups_claim.as_str()] {
            serde_json::Value::Array(v) => v
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect(),
            serde_json::Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok(TokenIdentity {
            subject: claims["sub"].as_str().unwrap_or_default().to_owned(),
            issuer: claims["iss"].as_str().unwrap_or_default().to_owned(),
            groups,
        })
    }
}

//! The daemon's own login to the real server: startup as the policy's role and database, and
//! authentication with the credential only the daemon holds (SCRAM-SHA-256, md5, cleartext).

use bytes::BytesMut;
use postgres_protocol::{
    authentication::{md5_hash, sasl},
    message::frontend,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{
    codec::{
        FrameError,
        backend::{Auth, ErrorFields},
        frame::{MAX_UPSTREAM_LOGIN_MESSAGE, Reader, next_frame},
    },
    config::PostgresTarget,
};
use crate::session::{credential::CredentialError, tls::TlsError};

/// Startup parameters an agent may pass on. Anything else (notably `options`, which can set
/// `role` or `session_authorization`, and `client_encoding`, which the gateway pins to UTF8
/// so the server reads bytes as the judge does) stays with the gateway.
const PASSED_PARAMS: [&str; 5] = [
    "application_name",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
];

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream refused the login: {} ({})", .0.message, .0.code)]
    Refused(ErrorFields),
    #[error("upstream asked for a password and the target has no credential configured")]
    NoCredential,
    #[error("upstream credential: {0}")]
    Credential(String),
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("upstream protocol: {0}")]
    Protocol(String),
}

impl From<TlsError> for UpstreamError {
    fn from(e: TlsError) -> Self {
        UpstreamError::Tls(e.0)
    }
}

impl From<FrameError> for UpstreamError {
    fn from(e: FrameError) -> Self {
        UpstreamError::Protocol(e.to_string())
    }
}

/// What the agent must hear of the upstream's startup.
#[derive(Debug, Default)]
pub struct Session {
    pub parameters: Vec<(String, String)>,
    pub process_id: i32,
    pub secret_key: i32,
}

/// Logs in on `io` and reads up to the first ReadyForQuery. Leftover bytes stay in `buf`.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    target: &PostgresTarget,
    agent_params: &[(String, String)],
) -> Result<Session, UpstreamError> {
    let pinned = target.pinned_parameters();
    let mut params: Vec<(&str, &str)> = vec![
        ("user", target.user.as_str()),
        ("database", target.database.as_str()),
    ];
    params.extend(pinned.iter().map(|(k, v)| (*k, v.as_str())));
    params.extend(
        agent_params
            .iter()
            .filter(|(k, _)| PASSED_PARAMS.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let mut out = BytesMut::new();
    frontend::startup_message(params, &mut out)?;
    io.write_all(&out).await?;

    let mut scram: Option<sasl::ScramSha256> = None;
    let mut session = Session::default();
    loop {
        let frame = loop {
            match next_frame(buf, MAX_UPSTREAM_LOGIN_MESSAGE)? {
                Some(f) => break f,
                None => {
                    if io.read_buf(buf).await? == 0 {
                        return Err(UpstreamError::Protocol("closed during login".into()));
                    }
                }
            }
        };
        let mut out = BytesMut::new();
        match frame.tag {
            b'R' => {
                // Read when the server asks, never before (a trust login needs none), off the
                // async workers, and again at each login: a rotated secret needs no reload.
                let password = || async {
                    target.credential.read().await.map_err(|e| match e {
                        CredentialError::NotConfigured => UpstreamError::NoCredential,
                        CredentialError::Unreadable(why) => UpstreamError::Credential(why),
                    })
                };
                match Auth::decode(&frame.body)? {
                    Auth::Ok => {}
                    Auth::Cleartext => {
                        frontend::password_message(&password().await?, &mut out)?;
                    }
                    Auth::Md5 { salt } => {
                        let hash = md5_hash(target.user.as_bytes(), &password().await?, salt);
                        frontend::password_message(hash.as_bytes(), &mut out)?;
                    }
                    Auth::Sasl { mechanisms } => {
                        if !mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                            return Err(UpstreamError::Protocol(format!(
                                "no supported SASL mechanism in {mechanisms:?}"
                            )));
                        }
                        // Channel binding needs TLS; without it the server must not require it.
                        let s = sasl::ScramSha256::new(
                            &password().await?,
                            sasl::ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(
                            sasl::SCRAM_SHA_256,
                            s.message(),
                            &mut out,
                        )?;
                        scram = Some(s);
                    }
                    Auth::SaslContinue(data) => {
                        let mut s = scram.take().ok_or_else(|| {
                            UpstreamError::Protocol("SASL continue before start".into())
                        })?;
                        // The salted password takes thousands of PBKDF2 rounds: on the CPU
                        // pool, so a login storm does not stall the sessions on the workers.
                        let (s, done) = crate::offload::cpu()
                            .run(move || {
                                let done = s.update(&data);
                                (s, done)
                            })
                            .await
                            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                        done?;
                        frontend::sasl_response(s.message(), &mut out)?;
                        scram = Some(s);
                    }
                    Auth::SaslFinal(data) => {
                        scram
                            .as_mut()
                            .ok_or_else(|| {
                                UpstreamError::Protocol("SASL final before start".into())
                            })?
                            .finish(&data)?;
                    }
                    Auth::Other(code) => {
                        return Err(UpstreamError::Protocol(format!(
                            "authentication method {code} is not supported"
                        )));
                    }
                }
            }
            b'E' => {
                return Err(UpstreamError::Refused(ErrorFields::decode(&frame.body)?));
            }
            b'S' => {
                let mut r = Reader::new("ParameterStatus", &frame.body);
                let name = r.cstr()?.to_owned();
                session.parameters.push((name, r.cstr()?.to_owned()));
            }
            b'K' => {
                let mut r = Reader::new("BackendKeyData", &frame.body);
                (session.process_id, session.secret_key) = (r.i32()?, r.i32()?);
            }
            b'Z' => return Ok(session),
            b'N' => {}
            t => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during login",
                    t as char
                )));
            }
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
        }
    }
}

//! TLS on the PostgreSQL upstream leg, negotiated in-band: an SSLRequest, one byte of answer
//! ('S' or 'N'), then the handshake on the same connection, with the target's client config
//! ([`crate::session::tls`]).

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_util::either::Either;

use super::upstream::UpstreamError;
use crate::session::tls::{UpstreamTls, server_name};

/// The upstream connection, encrypted or not.
pub type UpstreamIo = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Negotiates TLS as the target's mode asks. `name` is the host the policy names (a DNS name
/// or an IP address), checked against the certificate in `verify-full`.
pub async fn negotiate(
    mut tcp: TcpStream,
    tls: &UpstreamTls,
    name: &str,
) -> Result<UpstreamIo, UpstreamError> {
    let Some(config) = tls.client_config().await? else {
        return Ok(Either::Left(tcp));
    };
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
    let tls = TlsConnector::from(config)
        .connect(server_name(name)?, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok(Either::Right(Box::new(tls)))
}

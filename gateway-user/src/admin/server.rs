//! The admin socket's server: hyper's HTTP/1.1 over the unix socket. The caller's role comes
//! from the peer's credentials and is checked against the route the request line names before
//! a byte of the body is read: a caller who may not decide cannot make the daemon wait for,
//! buffer or parse a body.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Full, LengthLimitError, Limited};
use hyper::{
    Response, StatusCode,
    body::{Body, Frame, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{broadcast::error::RecvError, mpsc},
};

use super::{
    Answer, Request, answer,
    auth::{Caller, Role},
    failed,
    http::{self, MAX_REQUEST},
};
use crate::{approval::Event, daemon::state::State};

/// How long a connection may take to send its head, and then its body: idle connections do
/// not pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type ResponseBody = Either<Full<Bytes>, EventLines>;

pub async fn serve(listener: UnixListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_conn(conn, state).await {
                        tracing::debug!(error = %e, "admin connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_conn(conn: UnixStream, state: Arc<State>) -> anyhow::Result<()> {
    let cred = conn.peer_cred()?;
    let caller =
        tokio::task::spawn_blocking(move || Caller::from_peer(cred.uid(), cred.gid())).await?;
    let role = caller.role(&state.config.approvers, &state.config.auditors);
    let caller = Arc::new(caller);
    let service = service_fn(move |req| {
        let (state, caller) = (state.clone(), caller.clone());
        async move { Ok::<_, Infallible>(handle(req, &state, &caller, role).await) }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        // Its clock starts before the first byte: it closes idle connections as well as slow
        // heads.
        .header_read_timeout(REQUEST_TIMEOUT)
        // One request per connection (gatewayctl opens one per call): what a refused request
        // leaves unread (a body it declared) is never read as a next request, and the two
        // timeouts bound how long any connection may hold the daemon before it has asked.
        .keep_alive(false)
        // A head must fit in what the body may be (hyper answers 431 beyond).
        .max_buf_size(MAX_REQUEST)
        .serve_connection(TokioIo::new(conn), service)
        .await?;
    Ok(())
}

async fn handle(
    req: hyper::Request<Incoming>,
    state: &State,
    caller: &Caller,
    role: Role,
) -> Response<ResponseBody> {
    let method = req.method().as_str().to_owned();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let route = match http::route(&method, &target) {
        Ok(route) => route,
        Err(e) => return json(failed(e.status(), e.to_string())),
    };
    if role < route.needs() {
        tracing::debug!(admin.user = %caller.user, admin.uid = caller.uid, %method, %target, "admin request refused");
        // Answered with the body unread: hyper then closes the connection.
        return json(failed(
            403,
            format!(
                "{} (uid {}) may not {method} {target}: see approvers/auditors in the daemon's config",
                caller.user, caller.uid
            ),
        ));
    }
    let body = match read_body(req.into_body()).await {
        Ok(body) => body,
        Err(refused) => return json(refused),
    };
    let req = match route.with_body(&body) {
        Ok(req) => req,
        Err(e) => return json(failed(e.status(), e.to_string())),
    };
    tracing::debug!(admin.user = %caller.user, admin.uid = caller.uid, request = ?req, "admin request");
    if req == Request::ApprovalsWatch {
        return watch(state, role == Role::Auditor);
    }
    json(answer(state, caller, role, req).await)
}

/// The body, at most [`MAX_REQUEST`] bytes of it and within [`REQUEST_TIMEOUT`].
async fn read_body(body: Incoming) -> Result<Bytes, Answer> {
    let too_large = || failed(413, format!("the body is over {MAX_REQUEST} bytes"));
    // A declared length over the bound is refused before any of it is read.
    if body.size_hint().lower() > MAX_REQUEST as u64 {
        return Err(too_large());
    }
    let read = Limited::new(body, MAX_REQUEST).collect();
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(failed(400, format!("reading the body: {e}"))),
        Err(_) => Err(failed(
            408,
            format!("the body did not arrive within {REQUEST_TIMEOUT:?}"),
        )),
    }
}

fn json((status, body): Answer) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Streams approval events, one JSON line each, starting with the pending requests, until the
/// caller hangs up.
fn watch(state: &State, redact: bool) -> Response<ResponseBody> {
    let shown = move |e: Event| if redact { e.redacted() } else { e };
    // Subscribe before listing so nothing falls between the two.
    let mut events = state.approvals.subscribe();
    let pending = state.approvals.pending();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        for request in pending {
            if tx
                .send(line(&shown(Event::Pending { request })))
                .await
                .is_err()
            {
                return;
            }
        }
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                // hyper drops the body when the caller hangs up, even between events.
                () = tx.closed() => return,
            };
            match event {
                Ok(e) => {
                    if tx.send(line(&shown(e))).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    });
    let mut resp = Response::new(Either::Right(EventLines(rx)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

fn line(e: &Event) -> Bytes {
    // Events are plain data: serializing one does not fail.
    let mut bytes = serde_json::to_vec(e).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// The watch response's body: the lines its task sends, for as long as it sends them.
struct EventLines(mpsc::Receiver<Bytes>);

impl Body for EventLines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

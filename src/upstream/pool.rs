//! The upstream connection pool of one serving thread, on `hyper::client::conn`.
//!
//! Each serving thread runs a current-thread runtime, and its pool's connections are
//! driven by tasks on that same runtime: a request is sent, its connection read and its
//! response returned without any hand-off to another thread. An HTTP/1.1 connection goes
//! back to the pool when its response body has been read to the end (a body dropped
//! early leaves the connection in an unknown state, so it is closed instead); an HTTP/2
//! connection, where the upstream offers it by ALPN, is shared by every request. Idle
//! connections are bounded in number and in age.
//!
//! A pooled connection the upstream closed meanwhile can fail a request before any byte
//! of it was written; hyper hands that request back (`try_send_request`), and it is sent
//! once more on a fresh connection, as hyper-util's pooled client does. Nothing that may
//! have reached the upstream is ever sent twice here.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt;

use crate::body::{self, Body, BoxError};

/// Most idle HTTP/1.1 connections one thread keeps.
const MAX_IDLE: usize = 256;
/// How long an idle connection is kept (CometAPI's edge closes idle ones after about a
/// minute; hyper-util's pool waits 90 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no response.
#[derive(Debug)]
pub(super) enum PoolError {
    /// No connection could be made: nothing was sent.
    Connect(BoxError),
    /// The connection failed with the request (possibly) on it.
    Request(hyper::Error),
}

/// The pool of one serving thread. Its lock is only ever taken by that thread (and by
/// nobody across an `.await`), so it is never contended.
pub(super) struct LocalPool {
    connector: HttpsConnector<HttpConnector>,
    state: Mutex<State>,
}

impl std::fmt::Debug for LocalPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPool").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// HTTP/1.1 connections waiting for a request, the most recently used last.
    idle: VecDeque<(http1::SendRequest<Body>, Instant)>,
    /// The HTTP/2 connection, when the upstream speaks it.
    h2: Option<http2::SendRequest<Body>>,
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl LocalPool {
    pub(super) fn new(connector: HttpsConnector<HttpConnector>) -> Arc<Self> {
        Arc::new(LocalPool {
            connector,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it cannot leave the lists inconsistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A connection ready for a request, if one is idle.
    fn checkout(&self) -> Option<Conn> {
        let mut state = self.lock();
        if let Some(h2) = &state.h2 {
            if !h2.is_closed() {
                return Some(Conn::H2(h2.clone()));
            }
            state.h2 = None;
        }
        let now = Instant::now();
        while let Some((send, since)) = state.idle.pop_back() {
            // Not `is_ready`: a connection whose last body just ended may not be marked
            // ready until its task runs again; `ready().await` waits for that.
            if now.duration_since(since) < IDLE_TIMEOUT && !send.is_closed() {
                return Some(Conn::H1(send));
            }
        }
        None
    }

    fn checkin(&self, send: http1::SendRequest<Body>) {
        if send.is_closed() {
            return;
        }
        let mut state = self.lock();
        let now = Instant::now();
        // The oldest first: drop those past their age, and make room.
        while let Some((_, since)) = state.idle.front() {
            if now.duration_since(*since) < IDLE_TIMEOUT && state.idle.len() < MAX_IDLE {
                break;
            }
            state.idle.pop_front();
        }
        state.idle.push_back((send, now));
    }

    async fn connect(&self, uri: &Uri) -> Result<Conn, PoolError> {
        let stream = self
            .connector
            .clone()
            .oneshot(uri.clone())
            .await
            .map_err(PoolError::Connect)?;
        if stream.connected().is_negotiated_h2() {
            let (send, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(stream)
                .await
                .map_err(|e| PoolError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "upstream HTTP/2 connection ended with an error");
                }
            });
            self.lock().h2 = Some(send.clone());
            return Ok(Conn::H2(send));
        }
        let (send, connection) = http1::handshake(stream)
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "upstream connection ended with an error");
            }
        });
        Ok(Conn::H1(send))
    }

    /// Send `request` (its URI absolute) and return the response, its body returning the
    /// connection to the pool when read to the end.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
        host: &HeaderValue,
    ) -> Result<Response<Body>, PoolError> {
        let uri = request.uri().clone();
        // Once on a pooled connection, and once more on a fresh one if the pooled one
        // turned out dead before anything was written.
        for reused in [true, false] {
            let conn = match reused.then(|| self.checkout()).flatten() {
                Some(conn) => conn,
                None if reused => continue,
                // Boxed: connecting (TLS, handshakes) is a large state machine, and rare;
                // inline, it would make every request's future several kilobytes.
                None => Box::pin(self.connect(&uri)).await?,
            };
            match conn {
                Conn::H1(mut send) => {
                    if send.ready().await.is_err() {
                        if reused {
                            continue;
                        }
                        return Err(PoolError::Connect(
                            "the new upstream connection closed at once".into(),
                        ));
                    }
                    // HTTP/1.1 wants the origin form and a Host header.
                    let origin = uri
                        .path_and_query()
                        .map_or_else(|| http::uri::PathAndQuery::from_static("/"), Clone::clone);
                    *request.uri_mut() = Uri::from(origin);
                    request
                        .headers_mut()
                        .entry(http::header::HOST)
                        .or_insert_with(|| host.clone());
                    match send.try_send_request(request).await {
                        Ok(response) => {
                            let pool = Arc::clone(self);
                            return Ok(response.map(|incoming| {
                                body::boxed(Pooled {
                                    body: incoming,
                                    conn: Some((pool, send)),
                                })
                            }));
                        }
                        Err(mut err) => match err.take_message() {
                            Some(unsent) if reused => {
                                request = unsent;
                                *request.uri_mut() = uri.clone();
                            }
                            // Handed back unsent: nothing reached the upstream.
                            Some(_) => return Err(PoolError::Connect(err.into_error().into())),
                            None => return Err(PoolError::Request(err.into_error())),
                        },
                    }
                }
                Conn::H2(mut send) => {
                    if send.ready().await.is_err() {
                        self.lock().h2 = None;
                        if reused {
                            continue;
                        }
                        return Err(PoolError::Connect(
                            "the new upstream connection closed at once".into(),
                        ));
                    }
                    match send.try_send_request(request).await {
                        Ok(response) => return Ok(response.map(body::boxed)),
                        Err(mut err) => match err.take_message() {
                            Some(unsent) if reused => {
                                self.lock().h2 = None;
                                request = unsent;
                            }
                            Some(_) => return Err(PoolError::Connect(err.into_error().into())),
                            None => return Err(PoolError::Request(err.into_error())),
                        },
                    }
                }
            }
        }
        Err(PoolError::Connect("no upstream connection".into()))
    }
}

pin_project_lite::pin_project! {
    /// A response body that gives its HTTP/1.1 connection back to the pool once it has
    /// been read to the end.
    struct Pooled {
        #[pin]
        body: Incoming,
        conn: Option<(Arc<LocalPool>, http1::SendRequest<Body>)>,
    }
}

impl http_body::Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let mut body = this.body;
        let frame = body.as_mut().poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
            _ => false,
        };
        if ended && let Some((pool, send)) = this.conn.take() {
            pool.checkin(send);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

//! Serve a tower service over HTTP/1.1 and h2c on a TCP listener, with graceful shutdown.
//!
//! Used by the sidecar, the stand-in upstream and the webhook listener alike: accept,
//! hand each connection to hyper-util's auto (HTTP/1.1 or HTTP/2 prior knowledge)
//! builder, and on shutdown stop accepting, let in-flight requests finish within a grace
//! period, then close what is left.

use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};

use crate::body::{self, Body, BoxError};
use crate::upstream::ClientAddr;
use futures_util::TryFutureExt;

type ResponseFuture = std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, ServiceError>> + Send>>;

/// Serve `service` on `listener` until `shutdown` completes, then drain for up to `grace`.
///
/// Each request carries the peer's address as a [`ClientAddr`] extension.
pub async fn serve<S>(listener: TcpListener, service: S, shutdown: impl Future<Output = ()>, grace: Duration)
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small JSON requests and responses: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let hyper_service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer));
            // Boxing erases `S`'s associated types, which otherwise trip rustc's
            // higher-ranked lifetime check when the connection future is spawned.
            // An error from the service makes hyper drop the connection without an answer
            // (the stand-in uses that to simulate a reset).
            let future: ResponseFuture = Box::pin(
                service
                    .clone()
                    .oneshot(request.map(body::boxed))
                    .map_err(ServiceError::new::<S::Error>),
            );
            future
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), hyper_service)
            .into_owned();
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
        });
        // Reap finished connections so the set does not grow with every client.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    tracing::info!(grace = %crate::duration::format(grace), "shutting down: draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over: closing connections that are still busy");
    }
    connections.abort_all();
}

/// A service's error handed to hyper. A concrete type for the same reason as
/// [`crate::body::BodyError`]: a bare `Box<dyn Error>` trips rustc's check that the
/// spawned connection future is `Send`.
#[derive(Debug)]
struct ServiceError(BoxError);

impl ServiceError {
    fn new<E: Into<BoxError>>(err: E) -> Self {
        ServiceError(err.into())
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ServiceError {}

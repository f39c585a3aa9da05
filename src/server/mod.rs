//! Serve a tower service over HTTP/1.1 and h2c on a TCP listener, with bounded
//! connections and graceful shutdown.
//!
//! Used by the sidecar, the stand-in upstream and the webhook listener alike: accept,
//! hand each connection to hyper-util's auto (HTTP/1.1 or HTTP/2 prior knowledge)
//! builder, and on shutdown stop accepting, let in-flight requests finish within a grace
//! period, then close what is left.
//!
//! A listener that faces the internet (the webhook one) must not be held open by clients
//! that never finish a request, so [`ConnectionLimits`] bounds:
//!
//! - the time a request's head may take to arrive (`header_read_timeout`): hyper's own
//!   timer, which starts whenever an HTTP/1.1 connection waits for a request head,
//!   so it also closes a kept-alive connection that sends nothing for that long;
//! - the time a connection may stay open with no request in flight (`idle_timeout`), for
//!   HTTP/2 connections above all, which hyper's header timer does not cover;
//! - the number of open connections (`max_connections`): past it the listener stops
//!   accepting (new connections wait in the kernel's backlog) until one closes, so the
//!   process never runs out of file descriptors.

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::body::{self, Body, BoxError};
use crate::settings::{InvalidSetting, at_least_one, longer_than_zero, parse, settings, show};
use crate::upstream::ClientAddr;
use futures_util::TryFutureExt;

type ResponseFuture = std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, ServiceError>> + Send>>;

settings! {
    /// Bounds on the connections one listener takes. See the [module docs](self).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct ConnectionLimits in connections {
        /// Longest time a request's head may take to arrive (and an HTTP/1.1 connection may
        /// wait for its next request).
        pub header_read_timeout: Duration = Duration::from_secs(10),
        /// Longest time a connection may stay open with no request in flight.
        pub idle_timeout: Duration = Duration::from_secs(60),
        /// Most connections open at once.
        pub max_connections: usize = 512,
    }
    rows {
        header_read_timeout: restart, under Listeners,
            env: "RUNWAY_PROXY_HEADER_READ_TIMEOUT",
            flag: "header-read-timeout",
            doc: "Longest a request's head may take to arrive (and an HTTP/1.1 connection may wait for its next request).",
            parse: parse::positive_duration, show: show::duration;
        idle_timeout: restart, under Listeners,
            env: "RUNWAY_PROXY_IDLE_TIMEOUT",
            flag: "idle-timeout",
            doc: "Longest a connection stays open with no request in flight.",
            parse: parse::positive_duration, show: show::duration;
        max_connections: restart, under Listeners,
            env: "RUNWAY_PROXY_MAX_CONNECTIONS",
            flag: "max-connections",
            doc: "Most connections open at once on each listener; more wait to be accepted.",
            parse: parse::count, show: show::plain;
    }
}

impl ConnectionLimits {
    /// Check the limits (every one must be above zero); errors name the `[connections]` keys.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        longer_than_zero(self.header_read_timeout, "connections.header_read_timeout")?;
        longer_than_zero(self.idle_timeout, "connections.idle_timeout")?;
        at_least_one(self.max_connections, "connections.max_connections")
    }
}

/// Bind `count` listeners to one address with `SO_REUSEPORT`, for one serving thread
/// each: the kernel spreads new connections over them, and each connection then lives
/// on one thread from accept to close. With port 0, the first listener picks the port and
/// the others join it. (Linux lets only the same user join a port this way.)
pub fn bind_shared(addr: std::net::SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(count.max(1));
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serve `service` on `listener` until `shutdown` completes, then drain for up to `grace`.
///
/// Each request carries the peer's address as a [`ClientAddr`] extension.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: ConnectionLimits,
) where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A free slot first: at the cap, new connections wait in the kernel's backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
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
        let activity = Arc::new(Activity::new());
        // Once per connection: every request on it carries a clone.
        let client = ClientAddr::new(peer);
        let service = service.clone();
        let requests = Arc::clone(&activity);
        let hyper_service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(client.clone());
            let busy = requests.begin();
            // Boxing erases `S`'s associated types, which otherwise trip rustc's
            // higher-ranked lifetime check when the connection future is spawned.
            // An error from the service makes hyper drop the connection without an answer
            // (the stand-in uses that to simulate a reset).
            let future: ResponseFuture = Box::pin(
                service
                    .clone()
                    .oneshot(request.map(body::boxed))
                    .map_err(ServiceError::new::<S::Error>)
                    .map(move |result| {
                        drop(busy);
                        result
                    }),
            );
            future
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), hyper_service)
            .into_owned();
        let mut closing = closing_rx.clone();
        let idle_timeout = limits.idle_timeout;
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            let mut winding_down = false;
            loop {
                tokio::select! {
                    ended = connection.as_mut() => {
                        if let Err(err) = ended {
                            tracing::debug!(error = %err, %peer, "connection ended with an error");
                        }
                        break;
                    }
                    () = activity.idle_for(idle_timeout), if !winding_down => {
                        tracing::debug!(%peer, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        winding_down = true;
                    }
                    _ = closing.wait_for(|closing| *closing), if !winding_down => {
                        connection.as_mut().graceful_shutdown();
                        winding_down = true;
                    }
                }
            }
        });
        // Reap finished connections so the set does not grow with every client.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    tracing::info!(grace = %crate::duration::format(grace), "shutting down: draining in-flight requests");
    let _ = closing.send(true);
    let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!("grace period over: closing connections that are still busy");
    }
    connections.abort_all();
}

/// What one connection is doing: how many requests are in flight, and when the last one
/// ended. Two atomics per request; the idle check wakes once per `idle_timeout`.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the connection last had a request end.
    last_ms: AtomicU64,
}

/// Marks a request in flight until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = activity.opened.elapsed().as_millis() as u64;
        activity.last_ms.store(now, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Acquire);
        Busy(Arc::clone(self))
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = if self.in_flight.load(Ordering::Acquire) == 0 {
                let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
                self.opened + last + timeout
            } else {
                Instant::now() + timeout
            };
            if deadline <= Instant::now() && self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
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

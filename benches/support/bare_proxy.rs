//! The floor under `runway-proxy serve`: hyper 1 alone, proxying HTTP/1.1 to one
//! upstream, thread-per-core as `serve` is, with none of the proxy's layers (no limits,
//! retries, rewrite, metrics, logging, timeouts or hop-by-hop handling).
//!
//! It is not a product: `benches/compare-nginx.sh` runs it (`BARE=1`) beside nginx and
//! `serve`, so that what hyper and Tokio cost on the machine at hand is measured in the
//! same run, and the part of `serve`'s cost that is its own can be told apart.
//!
//! ```text
//! cargo build --release --example bare_proxy
//! target/release/examples/bare_proxy 127.0.0.1:8080 127.0.0.1:9000 [threads]
//! ```

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// This thread's idle upstream connections. HTTP/1.1 carries one exchange at a time, so
/// a connection still reading its last response is skipped, not waited for.
type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [listen, upstream, rest @ ..] if rest.len() <= 1 => (
            listen.parse::<SocketAddr>(),
            upstream.parse::<SocketAddr>(),
            rest.first().map_or(Ok(2), |t| t.parse::<usize>()),
        ),
        _ => {
            eprintln!("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR [THREADS]");
            std::process::exit(2);
        }
    };
    let (Ok(listen), Ok(upstream), Ok(threads)) = parsed else {
        eprintln!("bare_proxy: addresses are IP:PORT, threads a number");
        std::process::exit(2);
    };
    let workers: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || serve_thread(listen, upstream)))
        .collect();
    for worker in workers {
        if let Ok(Err(err)) = worker.join() {
            eprintln!("bare_proxy: {err}");
            std::process::exit(1);
        }
    }
}

fn serve_thread(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let socket = socket2::Socket::new(socket2::Domain::for_address(listen), socket2::Type::STREAM, None)?;
        socket.set_reuse_port(true)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&listen.into())?;
        socket.listen(1024)?;
        let listener = TcpListener::from_std(socket.into())?;
        let pool: Pool = Rc::default();
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = Rc::clone(&pool);
            tokio::task::spawn_local(async move {
                let service =
                    hyper::service::service_fn(move |request| forward(Rc::clone(&pool), upstream, request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn forward(
    pool: Pool,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let ready = {
        let mut idle = pool.borrow_mut();
        let at = idle.iter().position(SendRequest::is_ready);
        at.map(|at| idle.swap_remove(at))
    };
    let mut sender = match ready {
        Some(sender) => sender,
        None => match connect(&pool, upstream).await {
            Ok(sender) => sender,
            Err(err) => return Ok(bad_gateway(&err.to_string())),
        },
    };
    let (mut parts, body) = request.into_parts();
    parts.headers.insert(
        hyper::header::HOST,
        hyper::header::HeaderValue::from_static("upstream"),
    );
    let response = sender.send_request(Request::from_parts(parts, body)).await;
    // Back in the pool at once; it is skipped until its response has been read.
    pool.borrow_mut().push(sender);
    Ok(match response {
        Ok(response) => response.map(BodyExt::boxed_unsync),
        Err(err) => bad_gateway(&err.to_string()),
    })
}

async fn connect(
    pool: &Pool,
    upstream: SocketAddr,
) -> Result<SendRequest<Incoming>, Box<dyn std::error::Error>> {
    // Rarely here (a new client connection, or all busy): forget the closed ones.
    pool.borrow_mut().retain(|sender| !sender.is_closed());
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(connection);
    Ok(sender)
}

fn bad_gateway(why: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(why.to_owned()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

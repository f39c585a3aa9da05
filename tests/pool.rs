//! The serving threads' upstream pool, over loopback against an upstream that counts its
//! connections: connections are reused, a response dropped before its end does not hand
//! its connection back, and an upstream that closes connections without saying so costs
//! no request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the stand-in upstream treats a connection after its first answer.
#[derive(Clone, Copy)]
enum Upstream {
    /// Keep-alive, as any server.
    KeepAlive,
    /// Answer one request, then close without a `Connection: close` (an idle timeout
    /// that fired just then).
    CloseSilently,
}

/// A raw HTTP/1.1 upstream: `GET /big` answers 4 MiB slowly, anything else `ok`.
async fn upstream(mode: Upstream) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    // Read one request head (these requests have no body).
                    let head_end = loop {
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
                    buffer.drain(..head_end);
                    if head.starts_with("GET /big ") {
                        let size = 4 * 1024 * 1024;
                        let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
                        if stream.write_all(header.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'x'; 64 * 1024];
                        for _ in 0..size / chunk.len() {
                            if stream.write_all(&chunk).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    } else if stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if let Upstream::CloseSilently = mode {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

async fn get(proxy: &RunningProxy, path: &str) -> Reply {
    let request = Request::get(proxy.url(path)).body(Full::default()).unwrap();
    send(&client(), request).await.unwrap()
}

#[tokio::test]
async fn connections_are_reused_once_their_response_is_read() {
    let (url, accepted) = upstream(Upstream::KeepAlive).await;
    let proxy = start_proxy(&url, &[("threads", "1")]).await;
    for _ in 0..20 {
        let reply = get(&proxy, "/v1/models").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for 20 requests in turn"
    );
}

#[tokio::test]
async fn a_response_dropped_before_its_end_does_not_hand_its_connection_back() {
    let (url, accepted) = upstream(Upstream::KeepAlive).await;
    // `/big` is no Runway route, so its body streams through unread.
    let proxy = start_proxy(&url, &[("threads", "1")]).await;
    assert_eq!(get(&proxy, "/v1/models").await.status, StatusCode::OK);
    // Take the head of a long answer and walk away from its body.
    let response = client()
        .request(Request::get(proxy.url("/big")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The connection with half a body on it is not reused: the next request gets its
    // answer on a new one.
    let reply = get(&proxy, "/v1/models").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_upstream_that_closes_connections_silently_costs_no_request() {
    let (url, accepted) = upstream(Upstream::CloseSilently).await;
    let proxy = start_proxy(&url, &[("threads", "1")]).await;
    for i in 0..20 {
        let reply = get(&proxy, "/v1/models").await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {:?}", reply.body);
        assert_eq!(reply.body, "ok");
        // Sometimes straight away (the close may not be seen yet), sometimes later.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        20,
        "a new connection for each request"
    );
}

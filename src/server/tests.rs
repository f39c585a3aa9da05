use super::*;

#[test]
fn shared_listeners_take_one_port() {
    let listeners = bind_shared(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), 3).unwrap();
    assert_eq!(listeners.len(), 3);
    let port = listeners[0].local_addr().unwrap().port();
    assert_ne!(port, 0);
    assert!(listeners.iter().all(|l| l.local_addr().unwrap().port() == port));
    // And the kernel hands connections to them.
    let _client = std::net::TcpStream::connect(listeners[0].local_addr().unwrap()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_connection_is_idle_only_with_no_request_in_flight() {
    let activity = Arc::new(Activity::new());
    let busy = activity.begin();
    let idle = tokio::time::timeout(
        Duration::from_secs(300),
        activity.idle_for(Duration::from_secs(60)),
    );
    assert!(
        idle.await.is_err(),
        "a request in flight keeps the connection open"
    );
    drop(busy);
    let started = Instant::now();
    activity.idle_for(Duration::from_secs(60)).await;
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(60),
        "idle from the end of the last request"
    );
}

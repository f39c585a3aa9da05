//! The output archive's copier over loopback: the stand-in's CDN as the source, a real
//! directory as the store.

#![cfg(feature = "archive")]

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use runway_proxy::archive::{ArchiveError, ArchiveStore, Archiver, ObjectKey, SourceHosts};
use runway_proxy::mock::{Fault, MockConfig};

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn archiver(dir: &std::path::Path, hosts: &[&str]) -> Archiver {
    let store = ArchiveStore::open(&format!("file://{}", dir.display())).unwrap();
    Archiver::new(store, SourceHosts::new(hosts.iter().copied())).unwrap()
}

#[tokio::test]
async fn an_output_is_copied_whole_with_its_hash_in_parts() {
    // Five parts and a bit: the multipart path, not one put.
    const SIZE: u64 = 5 * 8 * 1024 * 1024 + 12_345;
    let (mock, url) = succeeded_output(MockConfig::default().output_bytes(SIZE)).await;
    let source = send(
        &client(),
        http::Request::get(&url).body(Default::default()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(source.body.len() as u64, SIZE);
    let dir = tempfile::tempdir().unwrap();
    let archiver = archiver(dir.path(), &["127.0.0.1"]);
    let key = ObjectKey::new("task-1", 0, "mp4");
    assert_eq!(
        archiver
            .store()
            .presigned(key.as_str(), Duration::from_secs(60))
            .await,
        Ok(None),
        "local files are linked by the proxy, not signed"
    );
    let copy = archiver.copy(&url, &key).await.unwrap();
    assert_eq!(copy.bytes, SIZE);
    assert_eq!(copy.sha256, sha256_hex(&source.body));
    assert_eq!(copy.content_type.as_deref(), Some("video/mp4"));
    assert_eq!(copy.source, url);
    let stored = std::fs::read(dir.path().join(key.as_str())).unwrap();
    assert_eq!(
        sha256_hex(&stored),
        copy.sha256,
        "the stored bytes are the source's"
    );
    // Copied again to the same key: the same object, replaced whole.
    let again = archiver.copy(&url, &key).await.unwrap();
    assert_eq!(again.sha256, copy.sha256);
    drop(mock);
}

#[tokio::test]
async fn too_large_gone_and_failing_sources_leave_nothing() {
    let (mock, url) = succeeded_output(
        MockConfig::default()
            .output_bytes(300_000)
            .outputs_expire_after(Duration::from_millis(700)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = ObjectKey::new("task-2", 0, "mp4");

    // Over the limit: refused by its Content-Length, before a byte is stored.
    let small = archiver(dir.path(), &["127.0.0.1"]).max_bytes(100_000);
    assert_eq!(
        small.copy(&url, &key).await,
        Err(ArchiveError::TooLarge { limit: 100_000 })
    );

    // A 503 is worth trying again; the next attempt copies.
    let archiver = archiver(dir.path(), &["127.0.0.1"]);
    let unavailable = Fault::Status {
        status: 503,
        retry_after: None,
        body: None,
    };
    mock.inject("/cdn/*", unavailable, 1);
    let failed = archiver.copy(&url, &key).await.unwrap_err();
    assert_eq!(failed, ArchiveError::Status(503));
    assert!(failed.is_transient());
    assert!(!dir.path().join(key.as_str()).exists(), "nothing at the key");
    assert_eq!(archiver.copy(&url, &key).await.unwrap().bytes, 300_000);

    // A source slower than the copy's timeout: the copy gives up, worth trying again.
    mock.inject("/cdn/*", Fault::delay(Duration::from_millis(500)), 1);
    let slow = archiver.clone().timeout(Duration::from_millis(100));
    let timed_out = slow
        .copy(&url, &ObjectKey::new("task-2", 2, "mp4"))
        .await
        .unwrap_err();
    assert_eq!(timed_out, ArchiveError::Timeout(Duration::from_millis(100)));
    assert!(timed_out.is_transient());

    // Expired: gone, and not worth trying again with the same URL.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let gone = archiver
        .copy(&url, &ObjectKey::new("task-2", 1, "mp4"))
        .await
        .unwrap_err();
    assert_eq!(gone, ArchiveError::Gone(403));
    assert!(!gone.is_transient());
}

#[tokio::test]
async fn only_listed_hosts_are_fetched_and_redirects_are_checked_again() {
    let (mock, url) = succeeded_output(MockConfig::default().output_bytes(1000)).await;
    let dir = tempfile::tempdir().unwrap();
    let key = ObjectKey::new("task-3", 0, "mp4");
    let before = mock.stats().received(url.trim_start_matches(&mock.url()));

    // Not on the list: refused without a request.
    let elsewhere = archiver(dir.path(), &["cdn.example.com"]);
    assert!(matches!(
        elsewhere.copy(&url, &key).await,
        Err(ArchiveError::Refused(_))
    ));
    // On the list through a wildcard only: an internal address is still refused.
    let localhost = url.replace("127.0.0.1", "localhost");
    let wildcard = archiver(dir.path(), &["*.localhost", "localhost.example"]);
    assert!(matches!(
        wildcard.copy(&localhost, &key).await,
        Err(ArchiveError::Refused(_))
    ));
    assert_eq!(
        mock.stats().received(url.trim_start_matches(&mock.url())),
        before,
        "no request reached the source"
    );

    // A listed source that redirects to an internal address, or to an unlisted host.
    let archiver = archiver(dir.path(), &["127.0.0.1"]);
    for target in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        url.replace("127.0.0.1", "localhost"),
        "https://evil.example/x.mp4".to_owned(),
    ] {
        let redirect = Fault::Respond {
            status: 302,
            headers: vec![("location".into(), target.clone())],
            body: String::new(),
        };
        mock.inject("/cdn/*", redirect, 1);
        let refused = archiver.copy(&url, &key).await;
        assert!(
            matches!(refused, Err(ArchiveError::Refused(_))),
            "{target}: {refused:?}"
        );
    }
    // A redirect that stays on the list is followed.
    let path = url.trim_start_matches(&mock.url()).to_owned();
    mock.inject(
        "/cdn/*",
        Fault::Respond {
            status: 307,
            headers: vec![("location".into(), path)],
            body: String::new(),
        },
        1,
    );
    assert_eq!(archiver.copy(&url, &key).await.unwrap().bytes, 1000);
    assert_eq!(
        send(
            &client(),
            http::Request::get(&url).body(Default::default()).unwrap()
        )
        .await
        .unwrap()
        .status,
        StatusCode::OK
    );
}

/// The same copy into a real S3-compatible store (SeaweedFS, from `scripts/test-services`),
/// read back through S3.
#[tokio::test]
async fn an_output_is_copied_to_s3_and_reads_back_the_same() {
    use object_store::ObjectStore as _;

    const SIZE: u64 = 2 * 8 * 1024 * 1024 + 777;
    let s3 = common::services::s3();
    let (mock, url) = succeeded_output(MockConfig::default().output_bytes(SIZE)).await;
    let prefix = format!("test-{}-{}", std::process::id(), rand_suffix());
    let store = ArchiveStore::open_with(&format!("s3://{}/{prefix}", s3.bucket), s3.options()).unwrap();
    let archiver = Archiver::new(store.clone(), SourceHosts::new(["127.0.0.1"])).unwrap();
    let key = ObjectKey::new("task-s3", 0, "mp4");
    let copy = archiver.copy(&url, &key).await.unwrap();
    assert_eq!(copy.bytes, SIZE);
    let read = store.inner().get(&store.path(key.as_str())).await.unwrap();
    assert_eq!(read.meta.size, SIZE);
    assert_eq!(
        read.attributes
            .get(&object_store::Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some("video/mp4")
    );
    let bytes = read.bytes().await.unwrap();
    assert_eq!(sha256_hex(&bytes), copy.sha256);
    assert!(
        store.path(key.as_str()).as_ref().starts_with(&prefix),
        "under the URL's prefix"
    );
    // A pre-signed link reads the copy without credentials.
    let link = store
        .presigned(key.as_str(), Duration::from_secs(600))
        .await
        .unwrap()
        .expect("S3 signs URLs");
    assert!(
        link.starts_with(s3.endpoint) && link.contains("X-Amz-Signature="),
        "{link}"
    );
    let read = send(
        &client(),
        http::Request::get(&link).body(Default::default()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(sha256_hex(&read.body), copy.sha256);
    let unsigned = link.split('?').next().unwrap().to_owned();
    let refused = send(
        &client(),
        http::Request::get(&unsigned).body(Default::default()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "not without the signature");

    // A refused copy leaves no object (the multipart upload is abandoned).
    let small = Archiver::new(store.clone(), SourceHosts::new(["127.0.0.1"]))
        .unwrap()
        .max_bytes(1000);
    let other = ObjectKey::new("task-s3", 1, "mp4");
    assert!(small.copy(&url, &other).await.is_err());
    assert!(matches!(
        store.inner().head(&store.path(other.as_str())).await,
        Err(object_store::Error::NotFound { .. })
    ));
    drop(mock);
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Links to copies in a `file://` store: served whole and by range, refused when forged,
/// when they are callback tokens, and once expired.
#[tokio::test]
async fn output_links_serve_the_copy_by_range_and_expire() {
    use std::sync::Arc;

    use runway_proxy::archive::{OutputLinks, OutputServer};
    use runway_proxy::callback::Keyring;

    const SIZE: u64 = 200_000;
    let (mock, url) = succeeded_output(MockConfig::default().output_bytes(SIZE)).await;
    let source = send(
        &client(),
        http::Request::get(&url).body(Default::default()).unwrap(),
    )
    .await
    .unwrap()
    .body;
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::open(&format!("file://{}", dir.path().display())).unwrap();
    let archiver = Archiver::new(store.clone(), SourceHosts::new(["127.0.0.1"])).unwrap();
    let key = ObjectKey::new("task-links", 0, "mp4");
    archiver.copy(&url, &key).await.unwrap();
    drop(mock);

    let keys = Arc::new(Keyring::parse("1:a-secret-of-at-least-thirty-two-bytes!").unwrap());
    let serve = |lifetime: Duration| {
        let server = OutputServer::new(store.clone(), Arc::clone(&keys), lifetime);
        async move { serve_outputs(server).await }
    };
    let base = serve(Duration::from_secs(3600)).await;
    let links = OutputLinks::new(&base, Arc::clone(&keys));
    let link = links.link(&key);
    assert!(link.starts_with(&format!("{base}/-/outputs/")), "{link}");
    assert!(
        !link.contains("task-links"),
        "the key is not readable in the link: {link}"
    );
    let get = |range: Option<&str>| {
        let mut request = http::Request::get(&link);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.body(Default::default()).unwrap()
    };

    let whole = send(&client(), get(None)).await.unwrap();
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, source);
    assert_eq!(whole.headers["content-type"], "video/mp4");
    assert_eq!(whole.headers["accept-ranges"], "bytes");

    let part = send(&client(), get(Some("bytes=100-199"))).await.unwrap();
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body, source.slice(100..200));
    assert_eq!(
        part.headers["content-range"],
        format!("bytes 100-199/{SIZE}").as_str()
    );
    let tail = send(&client(), get(Some("bytes=-10"))).await.unwrap();
    assert_eq!(tail.body, source.slice(source.len() - 10..));
    let outside = send(&client(), get(Some(&format!("bytes={SIZE}-"))))
        .await
        .unwrap();
    assert_eq!(outside.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        outside.headers["content-range"],
        format!("bytes */{SIZE}").as_str()
    );

    // A forged token, a callback token and an object that is gone: not found.
    let token = link.rsplit('/').next().unwrap();
    let mut forged = token.to_owned().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let callback_token = keys.mint("https://hooks.example.com/runway");
    for path in [String::from_utf8(forged).unwrap(), callback_token] {
        let reply = send(
            &client(),
            http::Request::get(format!("{base}/-/outputs/{path}"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }
    let missing = links.link(&ObjectKey::new("task-links", 9, "mp4"));
    assert_eq!(
        send(
            &client(),
            http::Request::get(&missing).body(Default::default()).unwrap()
        )
        .await
        .unwrap()
        .status,
        StatusCode::NOT_FOUND
    );

    // Past its lifetime (0 s: from the next second on), the link is gone.
    let strict = serve(Duration::ZERO).await;
    let soon_stale = OutputLinks::new(&strict, Arc::clone(&keys)).link(&key);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = send(
        &client(),
        http::Request::get(&soon_stale).body(Default::default()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(expired.status, StatusCode::GONE);
}

/// Serve `server` on a loopback port; its base URL.
async fn serve_outputs(server: runway_proxy::archive::OutputServer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(runway_proxy::server::serve(
        listener,
        server,
        std::future::pending(),
        Duration::from_secs(1),
        runway_proxy::server::ConnectionLimits::default(),
    ));
    format!("http://{addr}")
}

/// The retention sweep deletes what is older than the setting, and nothing else.
#[tokio::test]
async fn the_retention_sweep_deletes_only_what_is_older() {
    use object_store::{ObjectStore as _, PutPayload};

    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::open(&format!("file://{}/archive", dir.path().display())).unwrap();
    let day = Duration::from_secs(24 * 3600);
    let keys = [
        "2026/10/01/old/0-a.mp4",
        "2026/10/02/old/1-b.png",
        "2026/12/06/new/0-c.mp4",
    ];
    for key in keys {
        store
            .inner()
            .put(&store.path(key), PutPayload::from_static(b"bytes"))
            .await
            .unwrap();
    }
    let age = |path: std::path::PathBuf, days: u32| {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(std::time::SystemTime::now() - day * days)
            .unwrap();
    };
    age(dir.path().join("archive").join(keys[0]), 40);
    age(dir.path().join("archive").join(keys[1]), 31);
    // Old, but outside the store's directory: not the sweep's.
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    std::fs::write(dir.path().join("other/old.mp4"), b"keep").unwrap();
    age(dir.path().join("other/old.mp4"), 90);

    assert_eq!(store.sweep(day * 30).await.unwrap(), 2);
    assert!(!dir.path().join("archive").join(keys[0]).exists());
    assert!(!dir.path().join("archive").join(keys[1]).exists());
    assert!(
        dir.path().join("archive").join(keys[2]).exists(),
        "newer than 30 days"
    );
    assert!(dir.path().join("other/old.mp4").exists(), "outside the store");
    assert_eq!(store.sweep(day * 30).await.unwrap(), 0, "nothing left to sweep");
}

//! A large output is archived with memory bounded by the part size, not the output's:
//! its own test binary, so no other test's allocations count.

#![cfg(feature = "archive")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use runway_proxy::archive::{ArchiveStore, Archiver, ObjectKey, SourceHosts};
use runway_proxy::mock::MockConfig;

/// This process's resident memory, in bytes (`VmRSS`).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_output_is_archived_in_bounded_memory() {
    const SIZE: u64 = 1 << 30;
    let (_mock, url) = succeeded_output(MockConfig::default().output_bytes(SIZE)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::open(&format!("file://{}", dir.path().display())).unwrap();
    let archiver = Archiver::new(store, SourceHosts::new(["127.0.0.1"]))
        .unwrap()
        .timeout(Duration::from_secs(600));

    let before = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let key = ObjectKey::new("task-large", 0, "mp4");
    let copy = archiver.copy(&url, &key).await.unwrap();
    let took = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(copy.bytes, SIZE);
    assert_eq!(
        std::fs::metadata(dir.path().join(key.as_str())).unwrap().len(),
        SIZE
    );
    let grew = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    eprintln!(
        "1 GiB archived in {took:?} ({:.0} MB/s), RSS grew by {:.1} MB",
        SIZE as f64 / took.as_secs_f64() / 1e6,
        grew as f64 / 1e6
    );
    assert!(grew < 64 << 20, "RSS grew by {grew} bytes while copying 1 GiB");
}

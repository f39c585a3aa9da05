//! The `runway-proxy` binary run as a child process, its log lines collected: for the
//! CLI tests and for the replica tests, which run several `serve` processes at once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_runway-proxy");

/// A running binary whose stderr lines are collected.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Wait for a JSON log line whose `message` is `message`, returning it.
    pub fn wait_for_log(&mut self, message: &str) -> serde_json::Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no {message:?} log line; saw {:#?}", self.seen));
            self.seen.push(line.clone());
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                && value["message"] == message
            {
                return value;
            }
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the process to exit; returns its exit code and every stderr line.
    pub fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        self.seen.extend(self.lines.try_iter());
        // The reader thread may still be draining the pipe.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        (status.code(), std::mem::take(&mut self.seen))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A fresh data directory under Cargo's scratch space for integration tests.
pub fn data_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `runway-proxy serve` with a clean environment, a free webhook port and its own data dir.
pub fn serve() -> Command {
    let mut command = Command::new(BIN);
    command.arg("serve").env_remove("RUST_LOG");
    for key in runway_proxy::config::KEYS {
        command.env_remove(key.env);
    }
    command
        .env("RUNWAY_PROXY_WEBHOOK_LISTEN", "127.0.0.1:0")
        .env("RUNWAY_PROXY_DATA_DIR", data_dir());
    command
}

//! The `runway-proxy` binary: configuration errors, precedence, signals, logs.
#![cfg(feature = "cli")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::{BIN, Running, data_dir, serve};
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::mock::MockConfig;

#[test]
fn invalid_value_is_refused_with_exit_code_2_naming_the_key() {
    let output = serve().args(["--listen", "abc"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "listen: \"abc\" is not a socket address like 127.0.0.1:8080 or localhost:8080 (set by --listen)"
        ),
        "{stderr}"
    );

    let output = serve()
        .env("RUNWAY_PROXY_REQUEST_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("request_timeout:") && stderr.contains("$RUNWAY_PROXY_REQUEST_TIMEOUT"),
        "{stderr}"
    );

    let output = serve()
        .args(["--config", "/nonexistent/runway.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));

    // A URL that may carry a password is named without it.
    let output = serve()
        .env("RUNWAY_PROXY_REDIS_URL", "http://user:hunter2@redis.internal/")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("limit.redis_url: http://…@redis.internal/ is not a Redis URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let output = serve().args(["--redis-fallback", "maybe"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"maybe\" is not local or refuse"));

    // The same for the database, and a shared database needs shared secrets.
    let output = serve()
        .env(
            "RUNWAY_PROXY_DATABASE_URL",
            "postgres://runway:hunter2@db.internal:99999/runway",
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("database.url: postgres://…@db.internal:99999/runway is not a PostgreSQL URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let output = serve()
        .env(
            "RUNWAY_PROXY_DATABASE_URL",
            "postgres://runway:hunter2@db.internal/runway",
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("set webhook_secret and callback.token_keys too"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn flags_beat_env_beat_file_and_sigterm_drains_then_exits_0() {
    let mock = start_mock(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runway.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\nupstream = \"http://127.0.0.1:1\"\nlog_format = \"pretty\"\nrequest_timeout = \"7s\"\n",
    )
    .unwrap();
    let mut running = Running::spawn(
        serve()
            .args(["--config"])
            .arg(&file)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--max-attempts",
                "1",
            ])
            .env("RUNWAY_PROXY_UPSTREAM", mock.url())
            .env("RUNWAY_PROXY_LISTEN", "127.0.0.1:2"),
    );
    let started = running.wait_for_log("runway-proxy serving");
    let listen = started["listen"].as_str().unwrap().to_owned();
    assert_ne!(listen, "127.0.0.1:2", "the flag beats the environment");
    assert_eq!(
        started["upstream"],
        format!("{}/", mock.url()),
        "the environment beats the file"
    );

    let client = client();
    let reply = post_json(
        &client,
        &format!("http://{listen}/runway/feed"),
        &serde_json::json!({"task_id": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "forwarded to the upstream from the environment"
    );

    // A slow request is in flight when SIGTERM arrives; it still gets its answer.
    mock.inject(
        "/runway/feed",
        runway_proxy::mock::Fault::delay(Duration::from_millis(800)),
        1,
    );
    let url = format!("http://{listen}/runway/feed");
    let in_flight =
        tokio::spawn(async move { post_json(&client, &url, &serde_json::json!({"task_id": "x"})).await });
    while mock.stats().received("/runway/feed") < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.signal("TERM");
    let reply = in_flight.await.unwrap().expect("in-flight request finishes");
    assert_eq!(reply.status, StatusCode::OK);
    let (code, _) = tokio::task::spawn_blocking(move || running.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let mock = start_mock(MockConfig::default()).await;
    let mut running = Running::spawn(
        serve()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--max-attempts",
                "1",
                "--upstream",
                &mock.url(),
            ])
            .env("RUST_LOG", "trace")
            .env(
                "RUNWAY_PROXY_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            )
            .env(
                "RUNWAY_PROXY_CALLBACK_TOKEN_KEYS",
                "7:token-key-secret-of-at-least-32-bytes",
            )
            .env("RUNWAY_PROXY_ADMIN_TOKEN", "admin-token-secret-0123")
            // Spans are exported (to a collector that is not there) with a key.
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=otel-header-secret"),
    );
    let listen = running.wait_for_log("runway-proxy serving")["listen"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = "sk-live-0123456789abcdef";
    let request = Request::post(format!("http://{listen}/runway/feed?api_key=query-secret"))
        .header("authorization", format!("Bearer {secret}"))
        .body(Full::new(bytes::Bytes::from_static(b"{\"task_id\":\"x\"}")))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let logged = running.wait_for_log("request");
    // An admin call with the token, and one with a wrong one.
    for token in ["admin-token-secret-0123", "admin-token-secret-0124"] {
        let admin = Request::get(format!("http://{listen}/-/metrics"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::default())
            .unwrap();
        send(&client(), admin).await.unwrap();
    }
    assert_eq!(logged["path"], "/runway/feed");
    assert_eq!(logged["status"], 200);
    assert_eq!(logged["method"], "POST");
    assert!(logged["upstream_ms"].is_number());
    running.signal("INT");
    let (code, lines) = tokio::task::spawn_blocking(move || running.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    for line in &lines {
        assert!(!line.contains(secret), "API key in a log line: {line}");
        assert!(
            !line.contains("query-secret"),
            "query string in a log line: {line}"
        );
        assert!(
            !line.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "webhook secret in a log line: {line}"
        );
        assert!(
            !line.contains("token-key-secret"),
            "token key in a log line: {line}"
        );
        assert!(
            !line.contains("admin-token-secret"),
            "admin token in a log line: {line}"
        );
        assert!(
            !line.contains("otel-header-secret"),
            "an export header in a log line: {line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("cannot export spans")),
        "the export was tried (and its failure logged)"
    );
    assert!(lines.len() > 3, "trace logging produced lines to check");
}

#[test]
fn mock_upstream_refuses_a_size_it_cannot_read() {
    let output = Command::new(BIN)
        .args([
            "mock-upstream",
            "--listen",
            "127.0.0.1:0",
            "--output-bytes",
            "lots",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("output-bytes: \"lots\" is not a size"),
        "{stderr}"
    );
}

#[tokio::test]
async fn mock_upstream_runs_standalone() {
    let mut running = Running::spawn(Command::new(BIN).args([
        "mock-upstream",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--step",
        "50ms",
        "--output-bytes",
        "100KiB",
        "--outputs-expire-after",
        "1h",
    ]));
    let listen = running.wait_for_log("CometAPI stand-in serving")["listen"]
        .as_str()
        .unwrap()
        .to_owned();
    // A task's output is served at the size asked for.
    let created = post_json(
        &client(),
        &format!("http://{listen}/runwayml/v1/image_to_video"),
        &serde_json::json!({"promptText": "a cat", "promptImage": "https://x/y.png"}),
    )
    .await
    .unwrap();
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let mut served = None;
    for _ in 0..100 {
        // Its URL comes from a task read: signed, since outputs expire here.
        let read = Request::get(format!("http://{listen}/runwayml/v1/tasks/{id}"))
            .header("authorization", "Bearer sk-test")
            .body(Full::default())
            .unwrap();
        let task = send(&client(), read).await.unwrap().json();
        if let Some(video) = task["output"][0].as_str() {
            assert!(video.contains("?expires="), "{video}");
            let reply = send(&client(), Request::get(video).body(Full::default()).unwrap())
                .await
                .unwrap();
            served = Some(reply.body.len());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served, Some(100 * 1024));
    let stats = send(
        &client(),
        Request::get(format!("http://{listen}/-/mock/stats"))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(stats.status, StatusCode::OK);
    assert!(stats.json()["routes"].is_object());
    running.signal("TERM");
    let (code, _) = tokio::task::spawn_blocking(move || running.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn a_webhook_acknowledged_before_sigkill_is_delivered_after_restart() {
    use runway_proxy::relay::WebhookSigner;

    let secret = WebhookSigner::generate_secret();
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(100))).await;
    let subscriber = Subscriber::start().await;
    // The first delivery hangs: the proxy dies with it in flight.
    subscriber.set_delay(Duration::from_secs(60));
    let data = data_dir();
    let start = |data: &std::path::Path| {
        let mut running = Running::spawn(
            serve()
                .env("RUNWAY_PROXY_DATA_DIR", data)
                .env("RUNWAY_PROXY_WEBHOOK_SECRET", &secret)
                .args([
                    "--listen",
                    "127.0.0.1:0",
                    "--log-format",
                    "json",
                    "--allow-private-callbacks",
                ])
                .args(["--upstream", &mock.url(), "--delivery-schedule", "0s,100ms,1s"]),
        );
        let listen = running.wait_for_log("runway-proxy serving")["listen"]
            .as_str()
            .unwrap()
            .to_owned();
        (running, listen)
    };
    let (first, listen) = start(&data);
    let reply = post_json(
        &client(),
        &format!("http://{listen}/runway/pro/generate"),
        &serde_json::json!({"prompt": "a cat", "callback_url": subscriber.url("/hook")}),
    )
    .await
    .unwrap();
    assert_eq!(reply.json()["code"], 200);
    // Both callbacks acknowledged by the proxy, and a delivery in flight to the subscriber.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while mock.callbacks().iter().filter(|c| c.accepted).count() < 2 || subscriber.received().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "callbacks never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal("KILL");
    let (code, _) = tokio::task::spawn_blocking(move || first.finish()).await.unwrap();
    assert_eq!(code, None, "killed by a signal, no clean shutdown");

    subscriber.set_delay(Duration::ZERO);
    let (second, _) = start(&data);
    let signer = WebhookSigner::from_secret(&secret).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let verified: Vec<serde_json::Value> = subscriber
            .received()
            .iter()
            .filter(|(headers, body)| {
                let get = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let timestamp = get("webhook-timestamp").parse().unwrap_or(0);
                signer.verify(&get("webhook-id"), timestamp, body, &get("webhook-signature"))
            })
            .map(|(_, body)| serde_json::from_slice(body).unwrap())
            .collect();
        if verified.iter().any(|v| v["status"] == "3") {
            break verified;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let originals: Vec<serde_json::Value> = mock
        .callbacks()
        .iter()
        .map(|c| serde_json::from_slice(&c.body).unwrap())
        .collect();
    assert!(
        delivered.iter().all(|d| originals.contains(d)),
        "relayed bodies are the upstream's"
    );
    second.signal("TERM");
    let (code, _) = tokio::task::spawn_blocking(move || second.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[test]
fn demo_runs_end_to_end_and_exits_0() {
    let output = Command::new(BIN)
        .args(["demo", "--tasks", "12", "--seed", "3"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let row = |name: &str| {
        stdout
            .lines()
            .find_map(|line| {
                line.trim_start()
                    .strip_prefix(name)
                    .map(|rest| rest.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no row {name:?} in {stdout}"))
    };
    assert_eq!(row("duplicate submissions seen by the upstream"), "0");
    assert_eq!(row("submitted"), "14 (2 in the official format)");
    assert_eq!(
        row("official-format tasks finished (events by polling)"),
        "2 of 2"
    );
    row("callbacks lost upstream: results recovered from the feed");
    assert!(stdout.contains("tasks whose final status arrived"), "{stdout}");
    assert!(
        stdout.contains("OK: every accepted task's final result reached the subscriber"),
        "{stdout}"
    );
}

/// The README's "try it without a CometAPI key" block, run as written (with the built
/// binary standing in for `cargo run --release --`), answers with a task.
#[test]
fn the_readme_quick_start_runs_as_written() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("To try it without a CometAPI key")
        .expect("the quick start is in the README");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").expect("a shell block") + 6..];
    let block = &block[..block.find("```").expect("the block ends")];
    let script = block.replace("cargo run --release --", BIN);
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new("bash")
        .arg("-c")
        // Stop what the block starts in the background, however it ends.
        .arg(format!(
            "trap 'kill $(jobs -p) 2>/dev/null' EXIT\nset -e\n{script}"
        ))
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(answer["code"], 200, "{answer}");
    assert!(
        answer["data"]["task_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{answer}"
    );
}

#[test]
fn a_second_proxy_on_one_data_dir_exits_1_naming_the_holder_until_it_dies() {
    let data = data_dir();
    let spawn = || {
        Running::spawn(serve().env("RUNWAY_PROXY_DATA_DIR", &data).args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]))
    };
    let mut first = spawn();
    first.wait_for_log("runway-proxy serving");
    let (code, lines) = spawn().finish();
    assert_eq!(code, Some(1), "{lines:#?}");
    let refusal = lines.join("\n");
    assert!(refusal.contains(&data.display().to_string()), "{refusal}");
    assert!(
        refusal.contains(&format!("PID {}", first.child.id())),
        "names the holder: {refusal}"
    );
    // However the holder dies, the kernel lets go of the lock.
    first.signal("KILL");
    let (code, _) = first.finish();
    assert_eq!(code, None, "killed by a signal");
    let mut second = spawn();
    second.wait_for_log("runway-proxy serving");
}

#[test]
fn logs_piped_to_a_file_carry_no_escape_codes() {
    // The default format (auto), stderr a pipe, as under systemd or `2> file`: one JSON
    // object per line. And pretty asked for by name: plain text, no escape codes.
    for format in [None, Some("pretty")] {
        let mut command = serve();
        command.args(["--listen", "127.0.0.1:0"]);
        if let Some(format) = format {
            command.args(["--log-format", format]);
        }
        let running = Running::spawn(&mut command);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut lines = Vec::new();
        loop {
            let line = running
                .lines
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .expect("a start line");
            let serving = line.contains("runway-proxy serving");
            lines.push(line);
            if serving {
                break;
            }
        }
        running.signal("TERM");
        let (code, rest) = running.finish();
        lines.extend(rest);
        assert_eq!(code, Some(0));
        assert!(lines.iter().all(|line| !line.contains('\u{1b}')), "{lines:#?}");
        let json = lines
            .iter()
            .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_ok())
            .count();
        match format {
            None => assert_eq!(json, lines.len(), "auto, not a terminal: JSON lines: {lines:#?}"),
            Some(_) => assert_eq!(json, 0, "pretty: text lines: {lines:#?}"),
        }
    }
}

/// `runway-proxy config check` with a clean environment.
fn config_check() -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["config", "check"])
        .env_remove("RUNWAY_PROXY_CONFIG");
    for key in runway_proxy::config::KEYS {
        command.env_remove(key.env);
    }
    command
}

#[test]
fn config_check_prints_the_effective_settings_and_where_each_came_from() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("runway.toml");
    std::fs::write(
        &file,
        r#"
            listen = "127.0.0.1:9400"
            webhook_secret = "whsec_YSB3ZWJob29rIHNlY3JldCBvZiAzMiBieXRlcyBvayE="
            [limit]
            redis_url = "redis://runway:hunter2@redis.internal:6379/"
            [[retry.rules]]
            name = "busy-is-retryable"
            msg_contains = "busy"
            action = "retry"
            [[guard.keys]]
            label = "batch"
            hash = "00112233445566778899aabbccddeeff"
        "#,
    )
    .unwrap();
    let output = config_check()
        .arg(&file)
        .env("RUNWAY_PROXY_ADMIN_TOKEN", "an-admin-token-hunter2-long")
        .args(["--max-attempts", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} line in:\n{stdout}"))
            .split_whitespace()
            .filter(|word| *word != "#")
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("listen"), "listen 127.0.0.1:9400 file");
    assert_eq!(
        line("retry.max_attempts"),
        "retry.max_attempts 3 flag --max-attempts"
    );
    assert_eq!(
        line("admin_token"),
        "admin_token (set) env RUNWAY_PROXY_ADMIN_TOKEN"
    );
    assert_eq!(line("webhook_secret"), "webhook_secret (set) file");
    assert_eq!(line("request_timeout"), "request_timeout 1m default");
    assert_eq!(
        line("limit.redis_url"),
        "limit.redis_url redis://…@redis.internal:6379/ file"
    );
    assert!(
        line("retry.rules").starts_with("retry.rules busy-is-retryable, "),
        "{stdout}"
    );
    assert_eq!(line("guard.keys"), "guard.keys batch file");
    // Every setting, under its heading, and no secret.
    for key in runway_proxy::config::KEYS {
        line(key.toml);
    }
    for heading in runway_proxy::config::HEADINGS {
        assert!(stdout.contains(&format!("# {heading}\n")), "{heading}: {stdout}");
    }
    for secret in ["hunter2", "YSB3ZWJob29r"] {
        assert!(!stdout.contains(secret), "{secret} printed: {stdout}");
    }

    // What serve would refuse, check refuses the same way, with exit code 2.
    std::fs::write(&file, "[retry]\nbase_delay = \"10s\"\nmax_delay = \"1s\"\n").unwrap();
    let output = config_check().arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("runway-proxy: invalid configuration: retry."),
        "{stderr}"
    );
    assert!(stderr.contains("(set by the config file)"), "{stderr}");
    assert!(output.stdout.is_empty());
    std::fs::write(&file, "listen = \"127.0.0.1:9400\"\nlisten_typo = 1\n").unwrap();
    let output = config_check().arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown key \"listen_typo\""));
    let output = config_check().arg(dir.join("missing.toml")).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file"));
    // No file: the defaults and the environment.
    let output = config_check()
        .env("RUNWAY_PROXY_LISTEN", "localhost:9401")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("# valid: serve would start with these settings (no config file)")
    );
}

#[test]
fn serve_help_lists_the_settings_under_headings() {
    let output = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    let mut at = 0;
    for heading in runway_proxy::config::HEADINGS {
        let found = help[at..]
            .find(&format!("\n{heading}:\n"))
            .unwrap_or_else(|| panic!("no {heading} heading, in order, in:\n{help}"));
        at += found + 1;
    }
    // Each flag sits under its own heading: the text between its heading and the next.
    let section = |heading: &str| {
        let start = help.find(&format!("\n{heading}:\n")).unwrap();
        let rest = &help[start + 1..];
        let end = rest[1..].find("\n\n").map_or(rest.len(), |end| end + 1);
        rest[..end].to_owned()
    };
    assert!(section("Retry").contains("--retry-base-delay"), "{help}");
    assert!(section("Limits").contains("--max-tasks-in-flight "), "{help}");
    assert!(section("Stores").contains("--database-url"), "{help}");
    assert!(section("Observability").contains("--log-format"), "{help}");
    assert!(section("Listeners").contains("--webhook-listen"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_changes_the_rate_limit_while_a_request_waits_and_it_completes() {
    let mock = start_mock(MockConfig::default()).await;
    let subscriber = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runway.toml");
    // One submission per 30 s; a second waits its turn (max_wait is longer).
    let config = |rate: &str| format!("[limit]\nsubmit_rate = \"{rate}\"\nmax_wait = \"60s\"\n");
    std::fs::write(&file, config("2/min burst 1")).unwrap();
    let mut running = Running::spawn(
        serve()
            .arg("--config")
            .arg(&file)
            .args(["--listen", "127.0.0.1:0", "--allow-private-callbacks"])
            .env("RUNWAY_PROXY_UPSTREAM", mock.url()),
    );
    let started = running.wait_for_log("runway-proxy serving");
    let listen = started["listen"].as_str().unwrap().to_owned();
    let url = format!("http://{listen}/runway/pro/generate");
    let body =
        serde_json::json!({"prompt": "a cat", "model": "gen4", "callback_url": subscriber.url("/hook")});
    let first = post_json(&client(), &url, &body).await.unwrap();
    assert_eq!(first.json()["code"], 200);
    let waiting = tokio::spawn(async move { post_json(&client(), &url, &body).await.unwrap() });
    let metrics = format!("http://{listen}/-/metrics");
    eventually(
        "the second submission waits its turn",
        Duration::from_secs(10),
        async || {
            let reply = send(&client(), Request::get(&metrics).body(Full::default()).unwrap())
                .await
                .unwrap();
            String::from_utf8_lossy(&reply.body).contains("\nrunway_proxy_limit_waiting 1\n")
        },
    )
    .await;

    std::fs::write(&file, config("100/s")).unwrap();
    running.signal("HUP");
    // Well before its turn under the old rate (30 s).
    let reply = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting submission went on under the new rate")
        .unwrap();
    assert_eq!(reply.json()["code"], 200);
    assert_eq!(mock.stats().received("/runway/pro/generate"), 2);
    running.signal("TERM");
    let (code, lines) = tokio::task::spawn_blocking(move || running.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "SIGHUP did not end the process");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("configuration reloaded") && l.contains("limit.submit_rate")),
        "{lines:#?}"
    );
}

//! The web console in a real browser: Debian's headless Chromium, driven by playwright-core
//! (`tests/clients/console.cjs`), opens the console of a proxy listening on every address
//! (not loopback, so the admin token is required) with tasks, budgets and a dead letter
//! made through the stand-in. Without the token it shows the login form and nothing else;
//! with it, the tasks, the budget bars and the dead letter are in the page, and its Replay
//! button delivers the webhook. Screenshots are kept under `target/test-artifacts/console`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::config::Overrides;
use runway_proxy::mock::MockConfig;
use runway_proxy::tasks::key_hash;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "console-admin-token-7f3a";
const WAIT: Duration = Duration::from_secs(20);
const GENERATE: &str = "/runway/pro/generate";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn submit(proxy: &RunningProxy, key: &str, subscriber: &Subscriber) -> String {
    let body = json!({"prompt": "a lighthouse at dusk", "model": "gen4", "duration": 5,
                      "callback_url": subscriber.url("/hook")});
    let request = Request::post(proxy.url(GENERATE))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json());
    reply.json()["data"]["task_id"].as_str().unwrap().to_owned()
}

async fn admin(proxy: &RunningProxy, path: &str) -> Value {
    let request = Request::get(proxy.url(path))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::default())
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.json());
    reply.json()
}

/// Run the browser script against `url`; what it saw.
async fn browse(url: &str, shots: &std::path::Path) -> Value {
    let deps = std::process::Command::new(repo().join("scripts/test-deps"))
        .output()
        .expect("scripts/test-deps runs");
    assert!(
        deps.status.success(),
        "installing Chromium and playwright-core failed:\n{}",
        String::from_utf8_lossy(&deps.stderr)
    );
    let mut command = tokio::process::Command::new("node");
    command
        .arg(repo().join("tests/clients/console.cjs"))
        .env("NODE_PATH", repo().join("target/test-deps/node/node_modules"))
        .env("CONSOLE_URL", url)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SHOTS", shots)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the browser finishes within two minutes")
        .expect("node runs");
    assert!(
        output.status.success(),
        "the browser script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_tasks_budgets_and_dead_letters_and_replays_one() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(50))).await;
    let config = format!(
        "[guard]\ndaily_task_budget_per_key = 10\n[[guard.keys]]\nlabel = \"studio\"\nhash = \"{}\"\ndaily_task_budget = 4\n",
        key_hash(b"Bearer sk-studio")
    );
    let flags = Overrides::from([
        // Every address: not loopback, so the admin paths need the token.
        ("listen", "0.0.0.0:0".to_owned()),
        ("admin_token", ADMIN_TOKEN.to_owned()),
        ("callback.allow_private", "true".to_owned()),
        ("delivery.schedule", "0s,50ms".to_owned()),
        ("watch.poll_interval", "100ms".to_owned()),
    ]);
    let proxy = start_proxy_with(Some(&config), &mock.url(), &flags).await;
    let proxy_url = format!("http://127.0.0.1:{}", proxy.addr.port());
    let healthy = Subscriber::start().await;
    let failing = Subscriber::start().await;
    failing.set_status(StatusCode::INTERNAL_SERVER_ERROR);

    let mut studio = Vec::new();
    for _ in 0..3 {
        studio.push(submit(&proxy, "sk-studio", &healthy).await);
    }
    let lost = submit(&proxy, "sk-other", &failing).await;
    eventually("every task done", WAIT, async || {
        let tasks = admin(&proxy, "/-/tasks?status=done").await;
        tasks["tasks"].as_array().unwrap().len() == 4
    })
    .await;
    eventually("a dead letter for the failing subscriber", WAIT, async || {
        let dead = admin(&proxy, "/-/deliveries?state=dead").await;
        !dead["deliveries"].as_array().unwrap().is_empty()
    })
    .await;
    // The subscriber is back: a replay from the console now succeeds.
    failing.set_status(StatusCode::OK);
    let before = failing.received().len();

    let shots = repo().join("target/test-artifacts/console");
    std::fs::create_dir_all(&shots).unwrap();
    let seen = browse(&format!("{proxy_url}/-/console"), &shots).await;

    // Without the token: the login form, nothing else, and every data path refused.
    let login = &seen["login"];
    assert_eq!(login["form"], true, "{login}");
    assert_eq!(
        (login["nav"].clone(), login["app"].clone()),
        (json!(false), json!(false)),
        "{login}"
    );
    assert_eq!(login["links"], 0, "{login}");
    let text = login["text"].as_str().unwrap();
    assert!(text.contains("Admin token"), "{text}");
    for id in studio.iter().chain([&lost]) {
        assert!(!text.contains(id.as_str()), "{text}");
    }
    assert_eq!(
        (login["samples"].clone(), login["tasks"].clone()),
        (json!(401), json!(401))
    );
    let policy = seen["policy"].as_str().unwrap();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    assert!(
        seen["wrong"].as_str().unwrap().contains("refused"),
        "{}",
        seen["wrong"]
    );
    assert_eq!(seen["stored"], true, "the token is kept in sessionStorage");

    // The overview: five charts, drawn.
    let charts: Vec<&str> = seen["charts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(charts, ["requests", "retries", "waits", "tasks", "webhooks"]);
    let requests = &seen["charts"][0];
    assert!(requests["series"].as_u64().unwrap() >= 1, "{requests}");
    assert!(
        requests["legend"].as_str().unwrap().contains("submission 2xx"),
        "{requests}"
    );
    assert!(
        seen["build"]
            .as_str()
            .unwrap()
            .contains(env!("CARGO_PKG_VERSION"))
    );

    // Tasks: all four, with state and key; the key filter keeps the studio's.
    let rows = seen["tasks"].as_array().unwrap();
    for id in studio.iter().chain([&lost]) {
        let row = rows
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} listed: {rows:?}"));
        assert_eq!(row["cells"][1], "done", "{row}");
    }
    let mut filtered: Vec<String> = serde_json::from_value(seen["studio"].clone()).unwrap();
    filtered.sort();
    studio.sort();
    assert_eq!(filtered, studio);
    // A task's timeline: submitted, its callbacks, its deliveries.
    let timeline = seen["task"]["timeline"].as_array().unwrap();
    let kinds: Vec<&str> = timeline.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"kind-submitted"), "{timeline:?}");
    assert!(kinds.contains(&"kind-callback"), "{timeline:?}");
    assert!(
        timeline
            .iter()
            .any(|e| e["kind"] == "kind-delivery" && e["text"].as_str().unwrap().contains("delivered")),
        "{timeline:?}"
    );

    // Usage: the studio's task budget as a bar, 3 of 4.
    let budgets = seen["budgets"].as_array().unwrap();
    let card = budgets
        .iter()
        .find(|c| c["key"] == "studio")
        .expect("the studio's budget");
    assert_eq!(
        card["meters"][0],
        json!({"budget": "tasks", "value": 3, "max": 4}),
        "{card}"
    );
    assert!(card["text"].as_str().unwrap().contains("3 of 4 (75%)"), "{card}");

    // Deliveries: the dead letter, with its error; Replay delivers it.
    let dead = seen["dead"].as_array().unwrap();
    assert!(dead.iter().any(|d| d["cells"][1] == lost.as_str()), "{dead:?}");
    assert!(dead[0]["cells"][5].as_str().unwrap().contains("500"), "{dead:?}");
    assert!(
        seen["replayed"]
            .as_str()
            .unwrap()
            .contains("Re-queued 1 delivery"),
        "{}",
        seen["replayed"]
    );
    eventually("the replayed webhook arrives", WAIT, async || {
        failing.received().len() > before
    })
    .await;

    // Signing out forgets the token and empties the page.
    let signed_out = &seen["signedOut"];
    assert!(
        signed_out["why"].as_str().unwrap().starts_with("Signed out"),
        "{signed_out}"
    );
    assert_eq!(
        (signed_out["stored"].clone(), signed_out["app"].clone()),
        (Value::Null, json!(0))
    );

    // Nothing but the proxy was asked for anything, and the page logged no error.
    assert_eq!(seen["offProxy"], json!([]), "{}", seen["requests"]);
    assert_eq!(seen["problems"], json!([]));
    for shot in ["overview", "tasks", "task", "usage", "deliveries", "console"] {
        assert!(shots.join(format!("{shot}.png")).is_file(), "{shot}.png saved");
    }
}

async fn get(proxy: &RunningProxy, method: http::Method, path: &str, token: Option<&str>) -> Reply {
    let mut request = Request::builder().method(method).uri(proxy.url(path));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(&client(), request.body(Full::default()).unwrap())
        .await
        .unwrap()
}

/// Who gets what without a browser: the page to anyone, its data by the admin rule; and
/// what the new admin paths say to bad input (the error envelope, nothing changed).
#[tokio::test]
async fn the_console_page_is_open_its_data_follows_the_admin_rule_and_bad_input_is_refused() {
    use http::Method;
    let mock = start_mock(MockConfig::default()).await;

    // Loopback without a token: everything answers.
    let local = start_proxy_with(None, &mock.url(), &Overrides::new()).await;
    let page = get(&local, Method::GET, "/-/console", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(page.headers["x-frame-options"], "DENY");
    let samples = get(&local, Method::GET, "/-/console/samples", None).await;
    assert_eq!(samples.status, StatusCode::OK);
    let samples = samples.json();
    assert_eq!(samples["interval_s"], 10);
    assert_eq!(samples["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(samples["charts"].as_array().unwrap().len(), 5);
    assert_eq!(
        get(&local, Method::GET, "/-/console/console.js", None)
            .await
            .status,
        StatusCode::OK
    );
    for (method, path, status) in [
        (Method::GET, "/-/console/../metrics", StatusCode::NOT_FOUND),
        (Method::GET, "/-/console/app.js", StatusCode::NOT_FOUND),
        (Method::POST, "/-/console", StatusCode::METHOD_NOT_ALLOWED),
        (Method::POST, "/-/console/samples", StatusCode::METHOD_NOT_ALLOWED),
        (Method::POST, "/-/budgets", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/-/tasks?key=%zz", StatusCode::BAD_REQUEST),
        (Method::GET, "/-/tasks?status=lost", StatusCode::BAD_REQUEST),
        (Method::GET, "/-/tasks?owner=me", StatusCode::BAD_REQUEST),
        (Method::GET, "/-/tasks?limit=0", StatusCode::BAD_REQUEST),
        (Method::GET, "/-/tasks/no-such-task", StatusCode::NOT_FOUND),
    ] {
        let reply = get(&local, method.clone(), path, None).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.json());
        assert_eq!(
            reply.json()["code"],
            status.as_u16(),
            "{method} {path}: the error envelope"
        );
    }
    // A key filter that matches nothing is an empty page, not an error.
    let none = get(&local, Method::GET, "/-/tasks?key=nobody&status=", None).await;
    assert_eq!(none.json()["tasks"], json!([]));
    // Without a per-key budget, /-/budgets has no keys to show.
    let budgets = get(&local, Method::GET, "/-/budgets", None).await.json();
    assert_eq!(budgets["keys"], json!([]), "{budgets}");

    // Every address, no token: the page, but not its data (403 says how to get it).
    let open = Overrides::from([("listen", "0.0.0.0:0".to_owned())]);
    let exposed = start_proxy_with(None, &mock.url(), &open).await;
    assert_eq!(
        get(&exposed, Method::GET, "/-/console", None).await.status,
        StatusCode::OK
    );
    let refused = get(&exposed, Method::GET, "/-/console/samples", None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.json()["msg"].as_str().unwrap().contains("--admin-token"),
        "{}",
        refused.json()
    );
    assert_eq!(
        get(&exposed, Method::GET, "/-/budgets", None).await.status,
        StatusCode::FORBIDDEN
    );

    // With a token: the page still, the data with the token only.
    let mut guarded = open.clone();
    guarded.insert("admin_token", ADMIN_TOKEN.to_owned());
    let guarded = start_proxy_with(None, &mock.url(), &guarded).await;
    assert_eq!(
        get(&guarded, Method::GET, "/-/console", None).await.status,
        StatusCode::OK
    );
    let samples = "/-/console/samples";
    assert_eq!(
        get(&guarded, Method::GET, samples, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&guarded, Method::GET, samples, Some("wrong")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&guarded, Method::GET, samples, Some(ADMIN_TOKEN))
            .await
            .status,
        StatusCode::OK
    );
}

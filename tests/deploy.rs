//! The container and deployment examples name only what the binary accepts: the
//! Dockerfile's health check and settings, the compose file's replicas and stand-in, and
//! the Kubernetes sidecar. Each is read as its tool reads it (YAML, with anchors merged)
//! and its commands are run through the binary itself (`config check`, `--help`), so a
//! renamed flag or variable fails here rather than in a user's cluster.
#![cfg(feature = "cli")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::process::{BIN, Running};
use serde_yaml_ng::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|err| panic!("{path}: {err}"))
}

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            let mut value =
                serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}"));
            Value::apply_merge(&mut value).unwrap_or_else(|e| panic!("{path}: {e}"));
            value
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every environment variable the binary reads.
fn known_variable(name: &str) -> bool {
    name == "RUNWAY_PROXY_CONFIG" || runway_proxy::config::KEYS.iter().any(|key| key.env == name)
}

/// `runway-proxy config check` with exactly `env` and `flags`: what serve would say of them.
fn check(env: &BTreeMap<String, String>, flags: &[String]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(["config", "check"]).args(flags).env_clear();
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// The binary accepts `args` (subcommand and flags; values are not checked by `--help`).
fn accepted(args: &[String]) -> bool {
    let output = Command::new(BIN).args(args).arg("--help").output().unwrap();
    if !output.status.success() {
        eprintln!("{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    output.status.success()
}

/// The instructions of a Dockerfile, continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((word.to_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

#[test]
fn the_dockerfile_builds_the_way_the_readme_says_and_checks_health_with_the_binary() {
    let text = read("Dockerfile");
    let readme = read("README.md");
    let build = text
        .lines()
        .find_map(|line| line.strip_prefix("# Build:"))
        .map(str::trim)
        .expect("the Dockerfile names its build command");
    assert_eq!(build, "docker build -t runway-proxy .");
    assert!(
        readme.contains(&format!("\n{build}\n")),
        "the README documents `{build}` as the build command"
    );
    let instructions = dockerfile_instructions(&text);
    let all = |word: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(w, _)| w == word)
            .map(|(_, rest)| rest.as_str())
            .collect()
    };
    // Multi-stage: a build stage and a small final one.
    let stages = all("FROM");
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].ends_with(" AS build"), "{stages:?}");
    assert!(stages[1].contains("distroless"), "{stages:?}");
    let run = all("RUN").join(" ");
    // The shipped binary is the `dist` profile's (fat LTO), which the manifest declares.
    assert!(
        run.contains("cargo build --profile dist --locked --bin runway-proxy")
            && run.contains("cp target/dist/runway-proxy /runway-proxy"),
        "{run}"
    );
    assert!(
        read("Cargo.toml").contains("\n[profile.dist]\n"),
        "Cargo.toml declares the dist profile"
    );
    for copy in all("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let sources: Vec<&str> = copy.split_whitespace().collect();
        for source in &sources[..sources.len() - 1] {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(source).exists(),
                "COPY {source}: no such file in the repository"
            );
        }
    }
    // Not root, in the final stage.
    let user = all("USER");
    assert_eq!(user.len(), 1);
    assert!(
        !user[0].starts_with("0") && !user[0].starts_with("root"),
        "{user:?}"
    );
    // Every variable set is one the binary reads, and the data dir is the volume.
    let mut env = BTreeMap::new();
    for line in all("ENV") {
        for pair in line.split_whitespace() {
            let (name, value) = pair.split_once('=').expect("ENV NAME=value");
            assert!(
                known_variable(name),
                "ENV {name} is not a variable the binary reads"
            );
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    let volume = all("VOLUME").join("");
    assert!(
        volume.contains(&format!("\"{}\"", env["RUNWAY_PROXY_DATA_DIR"])),
        "{volume}"
    );
    for port in ["RUNWAY_PROXY_LISTEN", "RUNWAY_PROXY_WEBHOOK_LISTEN"] {
        let port = env[port].rsplit(':').next().unwrap().to_owned();
        assert!(
            all("EXPOSE").join(" ").split(' ').any(|p| p == port),
            "EXPOSE {port}"
        );
    }
    // serve accepts the image's settings as they are.
    let output = check(&env, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The health check, run as the image runs it (same variables, another port), passes
    // against a running proxy and fails against none.
    let health = all("HEALTHCHECK").join(" ");
    let command: Vec<String> =
        serde_json::from_str(health.split_once("CMD ").expect("HEALTHCHECK ... CMD [...]").1).unwrap();
    assert_eq!(command[0], "/usr/local/bin/runway-proxy");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("0.0.0.0:{port}");
    let healthcheck = || {
        Command::new(BIN)
            .args(&command[1..])
            .env("RUNWAY_PROXY_LISTEN", &listen)
            .output()
            .unwrap()
    };
    let down = healthcheck();
    assert_eq!(down.status.code(), Some(1), "no proxy: unhealthy");
    let data = common::process::data_dir();
    let mut serve = Command::new(BIN);
    serve
        .arg("serve")
        .env_clear()
        .env("RUNWAY_PROXY_LISTEN", &listen)
        .env("RUNWAY_PROXY_WEBHOOK_LISTEN", "127.0.0.1:0")
        .env("RUNWAY_PROXY_DATA_DIR", &data)
        .env("RUNWAY_PROXY_UPSTREAM", "http://127.0.0.1:9");
    let mut running = Running::spawn(&mut serve);
    running.wait_for_log("runway-proxy serving");
    let up = healthcheck();
    assert_eq!(
        up.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    running.signal("TERM");
    let (code, _) = running.finish();
    assert_eq!(code, Some(0));
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn the_compose_file_runs_three_replicas_on_shared_stores_with_settings_serve_accepts() {
    let documents = yaml_documents("deploy/compose.yaml");
    let services = documents[0]["services"].as_mapping().expect("services");
    let mut replicas = 0;
    let mut public_urls = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        if service["image"].as_str() != Some("runway-proxy") {
            continue;
        }
        let command = strings(&service["command"]);
        assert!(accepted(&command), "{name}: {command:?}");
        if command[0] == "mock-upstream" {
            continue;
        }
        assert_eq!(command[0], "serve", "{name}");
        replicas += 1;
        let mut env = BTreeMap::new();
        for (variable, value) in service["environment"].as_mapping().expect("environment") {
            let variable = variable.as_str().unwrap();
            assert!(
                known_variable(variable),
                "{name}: {variable} is not a variable the binary reads"
            );
            env.insert(
                variable.to_owned(),
                value.as_str().expect("a quoted value").to_owned(),
            );
        }
        let output = check(&env, &command[1..]);
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        for shared in ["database.url", "limit.redis_url"] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(shared) && !l.contains(" none ")),
                "{name}: {shared} set: {stdout}"
            );
        }
        public_urls.push(env["RUNWAY_PROXY_PUBLIC_URL"].clone());
        let health = strings(&service["healthcheck"]["test"]);
        assert_eq!(health[..2], ["CMD", "/usr/local/bin/runway-proxy"]);
        assert!(accepted(&health[2..]), "{name}: {health:?}");
    }
    assert_eq!(replicas, 3);
    public_urls.dedup();
    assert_eq!(
        public_urls.len(),
        3,
        "each replica is called back on its own address"
    );
    for store in ["redis", "postgres"] {
        assert!(services.contains_key(store), "{store}");
    }
}

#[test]
fn the_kubernetes_example_runs_the_proxy_beside_the_app_with_probes_and_a_webhook_service() {
    let documents = yaml_documents("deploy/kubernetes.yaml");
    let kind = |kind: &str| {
        documents
            .iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let deployment = kind("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    assert!(containers.len() >= 2, "the app and the proxy");
    let proxy = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("runway-proxy"))
        .expect("a runway-proxy container");
    let args = strings(&proxy["args"]);
    assert_eq!(args[0], "serve");
    assert!(accepted(&args), "{args:?}");
    // Values from the Secret are made up here, in the forms the comment's commands make.
    let from_secret = |variable: &str| match variable {
        "RUNWAY_PROXY_WEBHOOK_SECRET" => "whsec_YSB3ZWJob29rIHNlY3JldCBvZiAzMiBieXRlcyBvayE=",
        "RUNWAY_PROXY_CALLBACK_TOKEN_KEYS" => "1:0123456789abcdef0123456789abcdef0123456789abcdef",
        "RUNWAY_PROXY_ADMIN_TOKEN" => "0123456789abcdef0123456789abcdef",
        "RUNWAY_PROXY_DATABASE_URL" => "postgres://runway:pw@postgres:5432/runway",
        "RUNWAY_PROXY_REDIS_URL" => "redis://redis:6379/",
        other => panic!("{other} from the Secret: add its form here"),
    };
    let mut env = BTreeMap::new();
    for item in proxy["env"].as_sequence().unwrap() {
        let variable = item["name"].as_str().unwrap();
        assert!(
            known_variable(variable),
            "{variable} is not a variable the binary reads"
        );
        let value = match item["value"].as_str() {
            Some(value) => value.to_owned(),
            None => {
                assert!(item["valueFrom"]["secretKeyRef"]["key"].is_string(), "{variable}");
                from_secret(variable).to_owned()
            }
        };
        env.insert(variable.to_owned(), value);
    }
    let output = check(&env, &args[1..]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Probes on the proxy's own port, which is the one it listens on.
    let port_of = |name: &str| {
        proxy["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    let listening = |variable: &str| env[variable].rsplit(':').next().unwrap().parse::<u64>().unwrap();
    assert_eq!(port_of("proxy"), listening("RUNWAY_PROXY_LISTEN"));
    assert_eq!(port_of("webhooks"), listening("RUNWAY_PROXY_WEBHOOK_LISTEN"));
    for (probe, path) in [("livenessProbe", "/-/healthz"), ("readinessProbe", "/-/readyz")] {
        assert_eq!(proxy[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(proxy[probe]["httpGet"]["port"].as_str(), Some("proxy"), "{probe}");
    }
    // The pod is given longer to stop than the proxy gives its requests.
    let grace = env["RUNWAY_PROXY_SHUTDOWN_GRACE"]
        .trim_end_matches('s')
        .parse::<u64>()
        .unwrap();
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > grace);
    // The webhook listener behind a Service that selects these pods.
    let service = kind("Service");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (label, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&labels[label.as_str().unwrap()], value);
    }
    let targets: Vec<&str> = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["targetPort"].as_str())
        .collect();
    assert_eq!(targets, ["webhooks"]);
}

//! The configuration's loading, precedence and checks.

use std::time::Duration;

use super::*;
use crate::retry::Rules;
use crate::route::RouteClass;

fn no_env(_: &str) -> Option<String> {
    None
}

/// Why a configuration with `key` set to `value` by its flag (and nothing else) is
/// refused; `None` when it is not.
fn refusal(key: &'static str, value: &str) -> Option<String> {
    let flags = Overrides::from([(key, value.to_owned())]);
    Config::load(None, &no_env, &flags)
        .err()
        .map(|err| err.to_string())
}

#[test]
fn defaults_are_valid_and_documented() {
    let config = Config::default();
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.upstream, "https://api.cometapi.com");
    assert_eq!(config.connect_timeout, Duration::from_secs(10));
    assert_eq!(config.request_timeout, Duration::from_secs(60));
    assert_eq!(config.log_format, LogFormat::Auto);
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let file = "listen = \"127.0.0.1:1001\"\nupstream = \"http://file.example\"\nconnect_timeout = \"3s\"\n";
    let env = |name: &str| match name {
        "RUNWAY_PROXY_LISTEN" => Some("127.0.0.1:1002".to_owned()),
        "RUNWAY_PROXY_UPSTREAM" => Some("http://env.example".to_owned()),
        _ => None,
    };
    let flags = Overrides::from([("listen", "127.0.0.1:1003".to_owned())]);
    let config = Config::load(Some(file), &env, &flags).unwrap();
    assert_eq!(config.listen.port(), 1003, "flag wins");
    assert_eq!(config.upstream, "http://env.example", "env beats file");
    assert_eq!(
        config.connect_timeout,
        Duration::from_secs(3),
        "file beats default"
    );
    assert_eq!(config.request_timeout, Duration::from_secs(60), "default");
}

#[test]
fn invalid_value_names_key_form_and_origin() {
    let err = refusal("listen", "abc").expect("refused");
    assert_eq!(
        err,
        "listen: \"abc\" is not a socket address like 127.0.0.1:8080 or localhost:8080 (set by --listen)"
    );

    let env = |name: &str| (name == "RUNWAY_PROXY_REQUEST_TIMEOUT").then(|| "30".to_owned());
    let err = Config::load(None, &env, &Overrides::new())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("request_timeout: \"30\" has no unit"), "{err}");
    assert!(err.ends_with("(set by $RUNWAY_PROXY_REQUEST_TIMEOUT)"), "{err}");

    for upstream in ["ftp://x", "api.cometapi.com", "http://", "https://a?b=c"] {
        let err = refusal("upstream", upstream).expect("refused");
        assert!(err.starts_with("upstream: "), "{upstream}: {err}");
    }
}

#[test]
fn file_errors_are_clear() {
    let err = Config::load(Some("listen = "), &no_env, &Overrides::new()).unwrap_err();
    assert!(matches!(err, ConfigError::Toml(_)), "{err}");
    let err = Config::load(Some("lsten = \"1.2.3.4:5\""), &no_env, &Overrides::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config file: unknown key \"lsten\" (see the README's configuration table)"
    );
    let err = Config::load(Some("log_format = \"xml\""), &no_env, &Overrides::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "log_format: \"xml\" is not a log format (auto, pretty or json) (set by the config file)"
    );
}

#[test]
fn retry_settings_and_rules_load() {
    let file = r#"
        [retry]
        max_attempts = 3
        deadline = "10s"
        unknown_outcome = ["read", "submission"]
        body_limit = "64KiB"

        [[retry.rules]]
        name = "quota"
        msg_contains = "quota"
        action = "fail"
    "#;
    let env = |name: &str| (name == "RUNWAY_PROXY_RETRY_BASE_DELAY").then(|| "10ms".to_owned());
    let config = Config::load(Some(file), &env, &Overrides::new()).unwrap();
    assert_eq!(config.retry.max_attempts, 3);
    assert_eq!(config.retry.deadline, Duration::from_secs(10));
    assert_eq!(config.retry.base_delay, Duration::from_millis(10));
    assert_eq!(config.retry.body_limit, 64 * 1024);
    assert_eq!(
        config.retry.unknown_outcome,
        [RouteClass::Read, RouteClass::Submission]
    );
    assert_ne!(config.retry.rules, Rules::default(), "the user rule is in front");

    let bad = "[[retry.rules]]\naction = \"retry\"\n";
    let err = Config::load(Some(bad), &no_env, &Overrides::new())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("retry.rules: rule 0: a rule needs"), "{err}");
    let bad = "[[retry.rules]]\nstatus = [500]\naction = \"sometimes\"\n";
    let err = Config::load(Some(bad), &no_env, &Overrides::new())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("retry.rules: "), "{err}");
    let err = refusal("retry.max_attempts", "0").expect("refused");
    assert_eq!(
        err,
        "retry.max_attempts: 0 is not a number of attempts from 1 to 100 (set by --max-attempts)"
    );
    assert!(refusal("retry.unknown_outcome", "writes").is_some());
}

#[test]
fn limit_settings_load() {
    let file = "[limit]\nrate = \"5/s\"\nsubmit_rate = \"300/min burst 10\"\nmax_concurrency = 5\n";
    let flags = Overrides::from([("limit.max_wait", "2s".to_owned())]);
    let config = Config::load(Some(file), &no_env, &flags).unwrap();
    assert_eq!(config.limit.rate.unwrap().to_string(), "5/s");
    assert_eq!(config.limit.submit_rate.unwrap().to_string(), "300/min burst 10");
    assert_eq!(config.limit.max_concurrency, Some(5));
    assert_eq!(config.limit.max_wait, Duration::from_secs(2));
    assert_eq!(config.limit.rate_per_key, None, "unset is unlimited");
    let err = refusal("limit.rate", "fast").expect("refused");
    assert!(
        err.starts_with("limit.rate: \"fast\" is not a rate like 5/s"),
        "{err}"
    );
    assert!(refusal("limit.max_concurrency", "0").is_some());
}

#[test]
fn relay_settings_load_and_secrets_stay_hidden() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let file = format!(
        "webhook_secret = \"{secret}\"\n[delivery]\nschedule = [\"0s\", \"200ms\", \"1s\"]\n[callback]\nallow_private = true\n"
    );
    let config = Config::load(Some(&file), &no_env, &Overrides::new()).unwrap();
    assert_eq!(
        config.delivery.schedule,
        [0, 200, 1000].map(Duration::from_millis)
    );
    assert!(config.callback.allow_private);
    assert_eq!(config.webhook_secret.as_ref().map(Secret::expose), Some(secret));
    assert!(
        !format!("{config:?}").contains("MfKQ9r8"),
        "Debug never shows a secret"
    );

    let err = refusal("webhook_secret", "whsec_short").expect("refused");
    assert!(err.starts_with("webhook_secret: "), "{err}");
    assert!(refusal("callback.token_keys", "1:short").is_some());
    assert!(refusal("delivery.schedule", "0s,soon").is_some());
    assert!(refusal("public_url", "hooks.example.com").is_some());
}

#[test]
fn every_key_has_a_distinct_env_and_flag() {
    // The standard OpenTelemetry variables keep their own names.
    const STANDARD: &[&str] = &[
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    ];
    for (i, a) in KEYS.iter().enumerate() {
        if !STANDARD.contains(&a.env) {
            assert_eq!(
                a.env,
                format!("RUNWAY_PROXY_{}", a.flag.replace('-', "_").to_uppercase())
            );
        }
        for b in &KEYS[i + 1..] {
            assert_ne!(a.flag, b.flag);
            assert_ne!(a.env, b.env);
        }
    }
}

#[test]
fn settings_check_their_relations_and_name_the_origin() {
    let env = |name: &str| (name == "RUNWAY_PROXY_RETRY_BASE_DELAY").then(|| "10s".to_owned());
    let flags = Overrides::from([("retry.max_delay", "1s".to_owned())]);
    let err = Config::load(None, &env, &flags).unwrap_err().to_string();
    assert_eq!(
        err,
        "retry.base_delay: 10s is longer than retry.max_delay (1s), the cap on every backoff wait \
         (set by $RUNWAY_PROXY_RETRY_BASE_DELAY)"
    );
}

#[test]
fn every_default_reads_back_as_itself() {
    let defaults = Config::default();
    for key in KEYS {
        let mut config = Config::default();
        let shown = key.default_value();
        if shown == "generated" {
            continue;
        }
        key.set(&mut config, &shown)
            .unwrap_or_else(|e| panic!("{}: default {shown:?} does not parse: {e}", key.toml));
        assert_eq!(config, defaults, "{} = {shown:?} is not the default", key.toml);
    }
    assert!(defaults.validate().is_ok());
}

#[test]
fn listen_addresses_may_name_a_host() {
    let load = |listen: &str| {
        let flags = Overrides::from([("listen", listen.to_owned())]);
        Config::load(None, &no_env, &flags).map(|c| c.listen)
    };
    assert_eq!(load("localhost:8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
    assert_eq!(load("[::1]:8080").unwrap(), "[::1]:8080".parse().unwrap());
    assert_eq!(load(" 0.0.0.0:9 ").unwrap(), "0.0.0.0:9".parse().unwrap());
    for bad in [
        "localhost",
        "localhost:",
        "localhost:99999",
        ":8080",
        "local host:80",
        "http://localhost:80",
    ] {
        let err = load(bad).unwrap_err().to_string();
        assert!(err.starts_with(&format!("listen: {bad:?}")), "{bad}: {err}");
    }
}

#[test]
fn settings_that_contradict_each_other_are_refused() {
    let load = |flags: &[(&'static str, &str)]| {
        let flags: Overrides = flags.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        Config::load(None, &no_env, &flags)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    // A deadline shorter than the attempt timeout is not a contradiction: the deadline
    // ends the attempt, as it ends everything.
    assert!(load(&[("retry.deadline", "10s")]).is_ok());
    let same = load(&[("listen", "127.0.0.1:9000"), ("webhook_listen", "127.0.0.1:9000")]).unwrap_err();
    assert!(
        same.starts_with("webhook_listen: 127.0.0.1:9000 is listen's address too"),
        "{same}"
    );
    assert!(
        load(&[("listen", "127.0.0.1:0"), ("webhook_listen", "127.0.0.1:0")]).is_ok(),
        "two free ports"
    );
}

//! The README's configuration table and the example config cover every setting.

use runway_proxy::config::{Config, KEYS, Overrides};

#[test]
fn readme_documents_every_setting() {
    let readme = include_str!("../README.md");
    let rows: Vec<String> = KEYS
        .iter()
        .map(|key| {
            format!(
                "| `{}` | `{}` | `--{}` | `{}` | {} |",
                key.toml,
                key.env,
                key.flag,
                key.default_value(),
                key.doc
            )
        })
        .collect();
    let missing: Vec<&String> = rows.iter().filter(|row| !readme.contains(row.as_str())).collect();
    assert!(
        missing.is_empty(),
        "README's configuration table is out of date: {missing:#?}\n\nThe table as it should read:\n{}",
        rows.join("\n")
    );
}

#[test]
fn example_config_is_valid_and_complete() {
    let text = include_str!("../examples/runway-proxy.toml");
    let config = Config::load(Some(text), &|_| None, &Overrides::new()).expect("example config loads");
    assert_eq!(config, Config::default(), "the example shows the defaults");
    for key in KEYS {
        let (section, name) = key.toml.rsplit_once('.').unwrap_or(("", key.toml));
        assert!(
            text.contains(&format!("\n{name} = ")),
            "example config lacks {}",
            key.toml
        );
        if !section.is_empty() {
            assert!(
                text.contains(&format!("\n[{section}]\n")),
                "example config lacks [{section}]"
            );
        }
    }
}

#[test]
fn sidecar_example_is_a_valid_production_config() {
    let text = include_str!("../examples/sidecar.toml");
    let config = Config::load(Some(text), &|_| None, &Overrides::new()).expect("sidecar.toml loads");
    assert_eq!(
        config.public_url.as_deref(),
        Some("https://runway-hooks.example.com")
    );
    assert_eq!(config.limit.max_concurrency, Some(5));
    assert!(!config.callback.allow_private);
    assert_eq!(config.callback.allowed_hosts.len(), 2);
}

/// The task guard's worked example in the README is a config the proxy accepts, and
/// means what the README says of it.
#[test]
fn readme_task_guard_example_is_a_valid_config() {
    let readme = include_str!("../README.md");
    let section = readme
        .split_once("### A worked example: three keys, one tier-3 account")
        .expect("the worked example is in the README")
        .1;
    let toml = section
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("it has a toml block")
        .0;
    let config = Config::load(Some(toml), &|_| None, &Overrides::new()).expect("the example loads");
    assert_eq!(config.guard.max_tasks_in_flight, Some(5));
    assert_eq!(config.guard.max_tasks_in_flight_per_key, Some(3));
    assert_eq!(config.guard.daily_point_budget_per_key, Some(2000));
    let labels: Vec<_> = config
        .guard
        .keys
        .iter()
        .filter_map(|k| k.label.as_deref())
        .collect();
    assert_eq!(labels, ["editing", "social", "batch"]);
    assert_eq!(config.guard.keys[1].hashes.len(), 2);
}

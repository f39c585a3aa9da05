//! The README's configuration table and the example config cover every setting.

use runway_proxy::config::{Config, KEYS, Overrides};

#[test]
fn readme_documents_every_setting() {
    let readme = include_str!("../README.md");
    for key in KEYS {
        let row = format!(
            "| `{}` | `{}` | `--{}` | `{}` |",
            key.toml, key.env, key.flag, key.default
        );
        assert!(readme.contains(&row), "README is missing the row {row}");
    }
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

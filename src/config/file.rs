//! The TOML config file, flattened to `dotted.key = value text` so a file value goes
//! through the same parser as a flag or an environment variable.

use std::collections::BTreeMap;

use super::{ConfigError, KEYS, Origin};
use crate::guard::{KeyOverride, Price};
use crate::retry::RuleSpec;

/// Flatten a TOML document into `dotted.key -> value text`, refusing keys not in [`KEYS`],
/// and take out the structured `[[retry.rules]]` and `[[guard.keys]]`.
pub(super) fn flatten_toml(text: &str) -> Result<Flattened, ConfigError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml(e.to_string()))?;
    let rules: Vec<RuleSpec> = take_array(&mut table, "retry.rules")?;
    let keys: Vec<KeyOverride> = take_array(&mut table, "guard.keys")?;
    let prices: Vec<Price> = take_array(&mut table, "guard.prices")?;
    let mut out = BTreeMap::new();
    flatten_into(&table, "", &mut out)?;
    Ok((out, rules, keys, prices))
}

/// Dotted keys and their value text, the retry rules, the key overrides, the prices.
pub(super) type Flattened = (
    BTreeMap<String, String>,
    Vec<RuleSpec>,
    Vec<KeyOverride>,
    Vec<Price>,
);

fn flatten_into(
    table: &toml::Table,
    prefix: &str,
    out: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let text = match value {
            toml::Value::Table(inner) => {
                flatten_into(inner, &key, out)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // A list of words, such as route classes, reads like the flag's `a,b`.
            toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => items
                .iter()
                .filter_map(toml::Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        if !KEYS.iter().any(|k| k.toml == key) {
            return Err(ConfigError::UnknownKey(key));
        }
        out.insert(key, text);
    }
    Ok(())
}

/// Take the array of tables `[[key]]` (`retry.rules`) out of `document` (none: empty),
/// read as `T`s; a wrong shape names the key.
fn take_array<T: serde::de::DeserializeOwned>(
    document: &mut toml::Table,
    key: &'static str,
) -> Result<Vec<T>, ConfigError> {
    let (table, name) = key.split_once('.').unwrap_or((key, ""));
    let Some(value) = document
        .get_mut(table)
        .and_then(|t| t.as_table_mut())
        .and_then(|t| t.remove(name))
    else {
        return Ok(Vec::new());
    };
    value
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid {
            key,
            problem: e.to_string().trim().to_owned(),
            origin: Origin::File,
        })
}

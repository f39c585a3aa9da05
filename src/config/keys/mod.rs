//! Every setting, described once: its config key (which is also its field in
//! [`Config`]), environment variable, flag and help, whether a reload changes it, how a
//! value is read into [`Config`] and how the value in force is written back. The CLI
//! builds its flags and `--help` from this table, `config check` and the README's table
//! check read it, each default is read off [`Config::default`], and a reload derives what
//! it changes (and what needs a restart) from each row's `live` or `restart`.
//!
//! One file per heading of `serve --help`; a new setting is one `key!` row there.

mod callbacks;
mod limits;
mod listeners;
mod observability;
mod retry;
mod stores;
mod upstream;

use super::{Config, Secret, ValueError};
use crate::settings::ServiceUrl;

/// One configuration setting: a row of [`KEYS`].
#[derive(Clone, Copy)]
pub struct Key {
    /// Key in the TOML file (dotted for a key inside a table, e.g. `retry.max_attempts`).
    pub toml: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Command-line flag, without the leading `--`.
    pub flag: &'static str,
    /// One line describing the setting.
    pub doc: &'static str,
    /// Whether a reload puts a change in force (else it waits for the next start).
    pub live: bool,
    set: fn(&mut Config, &str) -> Result<(), ValueError>,
    show: fn(&Config) -> String,
    /// Put `from`'s value into `to`.
    copy: fn(&mut Config, &Config),
    /// Whether two configurations hold different values (secrets compared themselves,
    /// not as shown).
    differs: fn(&Config, &Config) -> bool,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("toml", &self.toml)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Read `raw` into `config`.
    pub fn set(&self, config: &mut Config, raw: &str) -> Result<(), ValueError> {
        (self.set)(config, raw)
    }

    /// The value `config` holds, written as the file would (`generated` for an unset
    /// secret, never a secret itself).
    pub fn show(&self, config: &Config) -> String {
        (self.show)(config)
    }

    /// Whether `old` and `new` hold different values for this setting.
    pub fn differs(&self, old: &Config, new: &Config) -> bool {
        (self.differs)(old, new)
    }

    /// Put `from`'s value of this setting into `to`.
    pub fn copy(&self, to: &mut Config, from: &Config) {
        (self.copy)(to, from)
    }

    /// The default, as the file would write it.
    pub fn default_value(&self) -> String {
        self.show(&Config::default())
    }

    /// The heading the setting is listed under in `serve --help` and `config check`.
    pub fn heading(&self) -> &'static str {
        heading_of(self.toml)
    }

    /// Whether this is an on/off switch (`--allow-private-callbacks` alone means true).
    pub fn is_switch(&self) -> bool {
        let value = self.default_value();
        value == "false" || value == "true"
    }
}

/// The headings of `serve --help`, in the order it lists them.
pub const HEADINGS: &[&str] = &[
    "Listeners",
    "Upstream",
    "Retry",
    "Limits",
    "Callbacks and relay",
    "Stores",
    "Observability",
];

/// Which heading a key belongs to, by its table (or, for top-level keys, its name).
fn heading_of(toml: &str) -> &'static str {
    if toml.starts_with("limit.redis_") {
        // The quota replicas share is a store, like the outbox's database.
        return "Stores";
    }
    let table = toml.split_once('.').map_or(toml, |(table, _)| table);
    match table {
        "listen" | "threads" | "webhook_listen" | "connections" | "shutdown_grace" => "Listeners",
        "upstream" | "connect_timeout" | "request_timeout" => "Upstream",
        "retry" => "Retry",
        "limit" | "guard" => "Limits",
        "public_url" | "webhook_secret" | "callback" | "delivery" | "watch" => "Callbacks and relay",
        "data_dir" | "database" | "idempotency" => "Stores",
        _ => "Observability",
    }
}

/// One row of [`KEYS`]: the setting's field in [`Config`] (its TOML key too), `live` or
/// `restart`, and the rest of [`Key`], with `parse: parser` for a value that is what its
/// parser makes of the text. How a reload compares and copies it is derived from the
/// field.
macro_rules! key {
    ($table:ident . $name:ident, $live:ident, $($rest:tt)*) => {
        key!(@row concat!(stringify!($table), ".", stringify!($name)), $live, [$table . $name], $($rest)*)
    };
    ($name:ident, $live:ident, $($rest:tt)*) => {
        key!(@row stringify!($name), $live, [$name], $($rest)*)
    };
    // `parse`: the value is what the parser makes of the text, nothing else.
    (@row $toml:expr, $live:ident, [$($field:ident).+],
        env: $env:literal, flag: $flag:literal, doc: $doc:literal,
        parse: $parse:expr, show: $show:expr $(,)?) => {
        key!(@row $toml, $live, [$($field).+], env: $env, flag: $flag, doc: $doc,
            set: |c, raw| {
                c.$($field).+ = $parse(raw)?;
                Ok(())
            },
            show: $show)
    };
    (@row $toml:expr, $live:ident, [$($field:ident).+],
        env: $env:literal, flag: $flag:literal, doc: $doc:literal,
        set: $set:expr, show: $show:expr $(,)?) => {
        Key {
            toml: $toml,
            env: $env,
            flag: $flag,
            doc: $doc,
            live: key!(@live $live),
            set: $set,
            show: $show,
            copy: |to, from| to.$($field).+ = from.$($field).+.clone(),
            differs: |old, new| old.$($field).+ != new.$($field).+,
        }
    };
    (@live live) => { true };
    (@live restart) => { false };
}
use key;

/// Every setting of [`Config`], heading by heading.
pub const KEYS: &[Key] = &ALL;

const ALL: [Key; COUNT] = concat(&[
    listeners::KEYS,
    upstream::KEYS,
    retry::KEYS,
    limits::KEYS,
    callbacks::KEYS,
    stores::KEYS,
    observability::KEYS,
]);

const COUNT: usize = listeners::KEYS.len()
    + upstream::KEYS.len()
    + retry::KEYS.len()
    + limits::KEYS.len()
    + callbacks::KEYS.len()
    + stores::KEYS.len()
    + observability::KEYS.len();

/// The tables one after the other (a `const`, so `KEYS` stays a plain slice).
const fn concat<const N: usize>(tables: &[&[Key]]) -> [Key; N] {
    let mut all = [tables[0][0]; N];
    let (mut at, mut table) = (0, 0);
    while table < tables.len() {
        let mut row = 0;
        while row < tables[table].len() {
            all[at] = tables[table][row];
            at += 1;
            row += 1;
        }
        table += 1;
    }
    assert!(at == N, "COUNT counts every table");
    all
}

/// A service's URL, or none (`none` or empty). Checked by the settings' `validate`.
fn service_url(raw: &str) -> Option<ServiceUrl> {
    match raw.trim() {
        "" | "none" => None,
        url => Some(ServiceUrl::new(url)),
    }
}

/// A service's URL as the file would write it: without its user and password.
fn show_service_url(url: Option<&ServiceUrl>) -> String {
    url.map_or_else(|| "none".to_owned(), ServiceUrl::redacted)
}

fn generated(secret: &Option<Secret>) -> String {
    match secret {
        Some(_) => "(set)".to_owned(),
        None => "generated".to_owned(),
    }
}

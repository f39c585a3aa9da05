//! [`KEYS`]: every setting of [`Config`], gathered from the `SETTINGS` table of each
//! settings type, which declares its rows next to its fields. The CLI builds its flags
//! and `--help` from this list, `config check` and the README's table check read it,
//! each default is read off [`Config::default`], and a reload derives what it changes
//! (and what needs a restart) from each row's `live`.

use super::Config;
use crate::archive::ArchiveSettings;
use crate::callback::CallbackSettings;
use crate::guard::GuardSettings;
use crate::idempotency::IdempotencySettings;
use crate::limit::LimitSettings;
use crate::relay::{DatabaseSettings, DeliverySettings};
use crate::retry::RetrySettings;
use crate::server::ConnectionLimits;
use crate::settings::{Heading, Setting, ValueError};
use crate::tasks::WatchSettings;
use crate::trace::TraceSettings;

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
    heading: Heading,
    row: &'static dyn Row,
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
        self.row.set(config, raw)
    }

    /// The value `config` holds, written as the file would (`generated` for an unset
    /// secret, never a secret itself).
    pub fn show(&self, config: &Config) -> String {
        self.row.show(config)
    }

    /// Whether `old` and `new` hold different values for this setting.
    pub fn differs(&self, old: &Config, new: &Config) -> bool {
        self.row.differs(old, new)
    }

    /// Put `from`'s value of this setting into `to`.
    pub fn copy(&self, to: &mut Config, from: &Config) {
        self.row.copy(to, from)
    }

    /// The default, as the file would write it.
    pub fn default_value(&self) -> String {
        self.show(&Config::default())
    }

    /// The heading the setting is listed under in `serve --help` and `config check`.
    pub fn heading(&self) -> Heading {
        self.heading
    }

    /// Whether this is an on/off switch (`--allow-private-callbacks` alone means true).
    pub fn is_switch(&self) -> bool {
        let value = self.default_value();
        value == "false" || value == "true"
    }

    const fn of<T: Table>(row: &'static Setting<T>) -> Key {
        assert!(
            in_table(row.key, T::NAME),
            "a row's key is its table's name, a dot and its field"
        );
        Key {
            toml: row.key,
            env: row.env,
            flag: row.flag,
            doc: row.doc,
            live: row.live,
            heading: row.heading,
            row,
        }
    }
}

/// The headings of `serve --help`, in the order it lists them.
pub const HEADINGS: &[Heading] = &Heading::ALL;

/// A settings type and where [`Config`] keeps it.
trait Table: Sized + 'static {
    /// Its table in the config file (empty: the top level).
    const NAME: &str;
    fn of(config: &Config) -> &Self;
    fn of_mut(config: &mut Config) -> &mut Self;
}

/// A row of any table, reading and writing the whole [`Config`].
trait Row: Sync {
    fn set(&self, config: &mut Config, raw: &str) -> Result<(), ValueError>;
    fn show(&self, config: &Config) -> String;
    fn copy(&self, to: &mut Config, from: &Config);
    fn differs(&self, old: &Config, new: &Config) -> bool;
}

impl<T: Table> Row for Setting<T> {
    fn set(&self, config: &mut Config, raw: &str) -> Result<(), ValueError> {
        Setting::set(self, T::of_mut(config), raw)
    }

    fn show(&self, config: &Config) -> String {
        Setting::show(self, T::of(config))
    }

    fn copy(&self, to: &mut Config, from: &Config) {
        Setting::copy(self, T::of_mut(to), T::of(from))
    }

    fn differs(&self, old: &Config, new: &Config) -> bool {
        Setting::differs(self, T::of(old), T::of(new))
    }
}

impl Table for Config {
    const NAME: &str = "";

    fn of(config: &Config) -> &Self {
        config
    }

    fn of_mut(config: &mut Config) -> &mut Self {
        config
    }
}

/// Every table of [`Config`] after its own rows, each with the field that holds it:
/// implements [`Table`] for each and lays their rows end to end in [`KEYS`].
macro_rules! tables {
    ($($settings:ty => $field:ident),* $(,)?) => {
        $(impl Table for $settings {
            const NAME: &str = stringify!($field);

            fn of(config: &Config) -> &Self {
                &config.$field
            }

            fn of_mut(config: &mut Config) -> &mut Self {
                &mut config.$field
            }
        })*

        const COUNT: usize = Config::SETTINGS.len() $(+ <$settings>::SETTINGS.len())*;

        const ALL: [Key; COUNT] = {
            let mut all = [Key::of(&Config::SETTINGS[0]); COUNT];
            let mut at = lay(&mut all, 0, Config::SETTINGS);
            $(at = lay(&mut all, at, <$settings>::SETTINGS);)*
            assert!(at == COUNT, "COUNT counts every table");
            all
        };
    };
}

tables! {
    ConnectionLimits => connections,
    RetrySettings => retry,
    LimitSettings => limit,
    GuardSettings => guard,
    CallbackSettings => callback,
    DeliverySettings => delivery,
    WatchSettings => watch,
    DatabaseSettings => database,
    IdempotencySettings => idempotency,
    TraceSettings => otel,
    ArchiveSettings => archive,
}

/// Every setting of [`Config`].
pub const KEYS: &[Key] = &ALL;

/// Put `rows` into `all` from `at` on; where the next table starts.
const fn lay<T: Table>(all: &mut [Key], at: usize, rows: &'static [Setting<T>]) -> usize {
    let mut row = 0;
    while row < rows.len() {
        all[at + row] = Key::of(&rows[row]);
        row += 1;
    }
    at + rows.len()
}

/// Whether `key` is `table.field` (a top-level key, with no table, has no dot).
const fn in_table(key: &str, table: &str) -> bool {
    let (key, table) = (key.as_bytes(), table.as_bytes());
    if table.is_empty() {
        let mut at = 0;
        while at < key.len() {
            if key[at] == b'.' {
                return false;
            }
            at += 1;
        }
        return true;
    }
    if key.len() <= table.len() + 1 || key[table.len()] != b'.' {
        return false;
    }
    let mut at = 0;
    while at < table.len() {
        if key[at] != table[at] {
            return false;
        }
        at += 1;
    }
    true
}

//! One row per setting, declared by the settings type that holds it: the setting's key,
//! environment variable, flag, help, heading and whether a reload changes it, and how
//! its value is read from text and written back. The sidecar's configuration lists these
//! tables; nothing else names a setting.

use super::ValueError;

/// One setting of the settings type `T`: a row of its `SETTINGS` table (for example
/// [`RetrySettings::SETTINGS`](crate::retry::RetrySettings::SETTINGS)). The sidecar's
/// configuration reads flags, environment variables and the config file through these
/// rows, and writes the values in force back with them (`config check`).
pub struct Setting<T: 'static> {
    /// Key in the config file, dotted for a key inside a table (`retry.max_attempts`).
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Command-line flag, without the leading `--`.
    pub flag: &'static str,
    /// One line describing the setting (the README's table and `serve --help` show it).
    pub doc: &'static str,
    /// The heading it is listed under in `serve --help` and `config check`.
    pub heading: Heading,
    /// Whether a reload puts a change in force (otherwise it waits for the next start).
    pub live: bool,
    pub(crate) set: fn(&mut T, &str) -> Result<(), ValueError>,
    pub(crate) show: fn(&T) -> String,
    pub(crate) copy: fn(&mut T, &T),
    pub(crate) differs: fn(&T, &T) -> bool,
}

impl<T> Setting<T> {
    /// Read `raw` (as a flag, a variable or the file writes it) into `settings`.
    pub fn set(&self, settings: &mut T, raw: &str) -> Result<(), ValueError> {
        (self.set)(settings, raw)
    }

    /// The value `settings` holds, written as the file would (never a secret itself).
    pub fn show(&self, settings: &T) -> String {
        (self.show)(settings)
    }

    /// Put `from`'s value into `to`.
    pub fn copy(&self, to: &mut T, from: &T) {
        (self.copy)(to, from)
    }

    /// Whether `old` and `new` hold different values (secrets compared themselves, not as
    /// shown).
    pub fn differs(&self, old: &T, new: &T) -> bool {
        (self.differs)(old, new)
    }
}

impl<T> std::fmt::Debug for Setting<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setting")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The headings of `serve --help` and `config check`, in the order they are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heading {
    /// Addresses, threads and connection bounds.
    Listeners,
    /// Where requests go, and how long they may take.
    Upstream,
    /// The retry middleware.
    Retry,
    /// Quotas, concurrency, task limits and budgets.
    Limits,
    /// The callback rewrite, the relay and the task watcher.
    Callbacks,
    /// Where state is kept, and what is shared with other replicas.
    Stores,
    /// Copies of task outputs in the operator's storage.
    Archive,
    /// Logs, traces and the admin paths.
    Observability,
}

impl Heading {
    /// Every heading, in the order `serve --help` lists them.
    pub const ALL: [Heading; 8] = [
        Heading::Listeners,
        Heading::Upstream,
        Heading::Retry,
        Heading::Limits,
        Heading::Callbacks,
        Heading::Stores,
        Heading::Archive,
        Heading::Observability,
    ];

    /// The heading as `serve --help` writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Heading::Listeners => "Listeners",
            Heading::Upstream => "Upstream",
            Heading::Retry => "Retry",
            Heading::Limits => "Limits",
            Heading::Callbacks => "Callbacks and relay",
            Heading::Stores => "Stores",
            Heading::Archive => "Archive",
            Heading::Observability => "Observability",
        }
    }
}

impl std::fmt::Display for Heading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A settings type declared with its settings: each field with its default, then a row
/// for each field the config file sets (its key is the table's name and the field's):
///
/// ```text
/// settings! {
///     /// Settings of the retry middleware (`[retry]`).
///     #[derive(Clone, Debug, PartialEq)]
///     pub struct RetrySettings in retry {
///         /// Attempts in all, counting the first (default 5).
///         pub max_attempts: u32 = 5,
///         /// The rule table (`[[retry.rules]]`, read apart).
///         pub rules: Rules = Rules::default(),
///     }
///     rows {
///         max_attempts: live, under Retry,
///             env: "RUNWAY_PROXY_MAX_ATTEMPTS",
///             flag: "max-attempts",
///             doc: "Attempts per request in all, counting the first.",
///             parse: parse::number, show: show::plain;
///     }
/// }
/// ```
///
/// This makes the struct, its `Default` (each field's default) and its `SETTINGS` table
/// (a [`Setting`] per row, in the rows' order; a row names a field of the struct, or
/// does not compile). A type whose keys are at the top level of the file leaves out
/// `in table`.
macro_rules! settings {
    (@key [] $field:ident) => { stringify!($field) };
    (@key [$table:ident] $field:ident) => { concat!(stringify!($table), ".", stringify!($field)) };
    (
        @make $table:tt
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
        rows {
            $(
                $row_field:ident: $live:ident, under $heading:ident,
                env: $env:literal, flag: $flag:literal, doc: $doc:literal,
                parse: $parse:expr, show: $show:expr;
            )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $(
                $(#[$field_meta])*
                $field_vis $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: $default,)*
                }
            }
        }

        impl $name {
            /// Each setting of this type in the config file, with its variable, flag,
            /// help and heading, and how its value reads and shows; the sidecar's
            /// configuration lists these.
            pub const SETTINGS: &'static [$crate::settings::Setting<Self>] = &[
                $(
                    $crate::settings::setting!(
                        @row $crate::settings::settings!(@key $table $row_field), $row_field, $live,
                        under $heading, env: $env, flag: $flag, doc: $doc, parse: $parse, show: $show
                    ),
                )*
            ];
        }
    };
    ($(#[$meta:meta])* $vis:vis struct $name:ident in $table:ident { $($body:tt)* } rows { $($rows:tt)* }) => {
        $crate::settings::settings!(@make [$table] $(#[$meta])* $vis struct $name { $($body)* } rows { $($rows)* });
    };
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($body:tt)* } rows { $($rows:tt)* }) => {
        $crate::settings::settings!(@make [] $(#[$meta])* $vis struct $name { $($body)* } rows { $($rows)* });
    };
}
pub(crate) use settings;

/// The [`Setting`] of one row of [`settings!`], which is its only caller: `$key` is the
/// row's key, `$field` the field it reads and writes. How a reload compares and copies
/// the value is derived from the field.
macro_rules! setting {
    (@row $key:expr, $field:ident, $live:ident, under $heading:ident,
        env: $env:literal, flag: $flag:literal, doc: $doc:literal,
        parse: $parse:expr, show: $show:expr $(,)?) => {
        $crate::settings::Setting {
            key: $key,
            env: $env,
            flag: $flag,
            doc: $doc,
            heading: $crate::settings::Heading::$heading,
            live: $crate::settings::setting!(@live $live),
            set: |settings, raw| {
                settings.$field = $parse(raw)?;
                Ok(())
            },
            show: |settings| $show(&settings.$field),
            copy: |to, from| to.$field = from.$field.clone(),
            differs: |old, new| old.$field != new.$field,
        }
    };
    (@live live) => { true };
    (@live restart) => { false };
}
pub(crate) use setting;

/// Builder methods that each set one value and give the builder back, tower-style:
///
/// ```text
/// setters! {
///     /// The retry settings.
///     settings(settings: RetrySettings) => settings;
///     /// Attempts in all, counting the first.
///     max_attempts(attempts: u32) => settings.max_attempts;
///     /// A quota for all calls.
///     rate(quota: QuotaSpec) => settings.rate = Some(quota);
/// }
/// ```
///
/// `name(argument: Type) => field` stores the argument in `self.field` (a path into the
/// builder); `=> field = value` stores `value`, made of the arguments.
macro_rules! setters {
    ($($(#[$meta:meta])* $name:ident($($arg:ident: $ty:ty),+) => $($field:ident).+ $(= $value:expr)?;)*) => {
        $(
            $(#[$meta])*
            pub fn $name(mut self, $($arg: $ty),+) -> Self {
                self.$($field).+ = $crate::settings::setters!(@value [$($arg),+] $(, $value)?);
                self
            }
        )*
    };
    (@value [$arg:ident]) => { $arg };
    (@value [$($arg:ident),+], $value:expr) => { $value };
}
pub(crate) use setters;

//! The archive's settings (`[archive]` in the config file).

use std::time::Duration;

use crate::settings::{InvalidSetting, check, longer_than_zero, parse, settings, show};

/// The hosts outputs are downloaded from unless configured: CometAPI's and Runway's CDNs.
pub const DEFAULT_HOSTS: &[&str] = &[
    "runwaycdn.cometapi.com",
    "*.cometapi.com",
    "dnznrvs05pmza.cloudfront.net",
];

settings! {
    /// Where and how task outputs are archived (`[archive]` in the config file). Off
    /// while `url` is unset.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct ArchiveSettings in archive {
        /// The store: `file:///path`, `s3://bucket/prefix`, `gs://bucket/prefix` or
        /// `az://container/prefix`; credentials from the standard environment. `None`: off.
        pub url: Option<String> = None,
        /// Base URL where the bucket (or a CDN before it) serves the objects; links are
        /// `{public_url}/{key}`. `None`: pre-signed links (`file://`: links the webhook
        /// listener serves at `/-/outputs/`).
        pub public_url: Option<String> = None,
        /// How long a pre-signed or served link works after the webhook is made.
        pub link_lifetime: Duration = Duration::from_secs(7 * 86_400),
        /// Largest output copied; a larger one is refused (the webhook keeps its URLs).
        pub max_bytes: usize = 2 << 30,
        /// How long one output's copy (download and upload) may take.
        pub timeout: Duration = Duration::from_secs(300),
        /// Hosts outputs are downloaded from (`*.example.com` for subdomains); a private or
        /// loopback address only for a host listed exactly.
        pub hosts: Vec<String> = DEFAULT_HOSTS.iter().map(|h| (*h).to_owned()).collect(),
        /// How long a succeeded task's webhook is held for its outputs to be copied; past
        /// it the webhook goes out with the original URLs, and copying goes on.
        pub deadline: Duration = Duration::from_secs(600),
        /// How long copies are kept; `0`: forever.
        pub retention: Duration = Duration::from_secs(30 * 86_400),
        /// Tasks copied at once.
        pub workers: usize = 4,
    }
    rows {
        url: restart, under Archive,
            env: "RUNWAY_PROXY_ARCHIVE_URL",
            flag: "archive-url",
            doc: "Archive succeeded tasks' outputs to this store: file:///path, s3://bucket/prefix, gs://..., az://... (credentials from the standard environment; none: off).",
            parse: parse::optional_text, show: show::optional_text;
        public_url: restart, under Archive,
            env: "RUNWAY_PROXY_ARCHIVE_PUBLIC_URL",
            flag: "archive-public-url",
            doc: "Base URL where the bucket or a CDN serves archived objects (none: pre-signed links; file://: links the webhook listener serves).",
            parse: parse::optional_text, show: show::optional_text;
        link_lifetime: restart, under Archive,
            env: "RUNWAY_PROXY_ARCHIVE_LINK_LIFETIME",
            flag: "archive-link-lifetime",
            doc: "How long a pre-signed or served link to an archived output works.",
            parse: parse::positive_duration, show: show::duration;
        max_bytes: restart, under Archive,
            env: "RUNWAY_PROXY_ARCHIVE_MAX_BYTES",
            flag: "archive-max-bytes",
            doc: "Largest output archived; a larger one is refused and the webhook keeps its URLs.",
            parse: parse::size, show: show::size;
        timeout: restart, under Archive,
            env: "RUNWAY_PROXY_ARCHIVE_TIMEOUT",
            flag: "archive-timeout",
            doc: "How long one output's copy (download and upload) may take before it is tried again.",
            parse: parse::positive_duration, show: show::duration;
        hosts: restart, under Archive,
            env: "RUNWAY_PROXY_ARCHIVE_HOSTS",
            flag: "archive-hosts",
            doc: "Hosts outputs are downloaded from, comma-separated (*.example.com for subdomains; a private address only when listed exactly).",
            parse: parse::list, show: show::list;
        deadline: restart, under Archive,
            env: "RUNWAY_PROXY_ARCHIVE_DEADLINE",
            flag: "archive-deadline",
            doc: "How long a succeeded task's webhook waits for its outputs to be archived before it goes out with the original URLs.",
            parse: parse::positive_duration, show: show::duration;
        retention: restart, under Archive,
            env: "RUNWAY_PROXY_ARCHIVE_RETENTION",
            flag: "archive-retention",
            doc: "How long archived outputs are kept before the sweep deletes them (0: forever).",
            parse: parse::duration, show: show::duration;
        workers: restart, under Archive,
            env: "RUNWAY_PROXY_ARCHIVE_WORKERS",
            flag: "archive-workers",
            doc: "Tasks whose outputs are archived at once.",
            parse: parse::count, show: show::plain;
    }
}

impl ArchiveSettings {
    /// Check every value (the store URL is checked when the store is opened).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        longer_than_zero(self.timeout, "archive.timeout")?;
        longer_than_zero(self.deadline, "archive.deadline")?;
        check(
            self.link_lifetime >= Duration::from_secs(60),
            "archive.link_lifetime",
            || "must be at least 1m".into(),
        )?;
        check(
            self.retention.is_zero() || self.retention >= Duration::from_secs(3600),
            "archive.retention",
            || "must be 0 (keep forever) or at least 1h".into(),
        )?;
        check((1..=256).contains(&self.workers), "archive.workers", || {
            "must be from 1 to 256".into()
        })?;
        check(
            self.public_url
                .as_deref()
                .is_none_or(|u| u.starts_with("https://") || u.starts_with("http://")),
            "archive.public_url",
            || "must be an http(s) URL".into(),
        )
    }
}

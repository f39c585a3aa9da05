//! The settings listed under "Callbacks and relay" in `serve --help` and `config check`.

use super::super::Secret;
use super::super::values::*;
use super::*;
use crate::callback::Keyring;
use crate::duration;
use crate::relay::WebhookSigner;

/// Under "Callbacks and relay".
pub(super) const KEYS: &[Key] = &[
    key! {
        public_url, restart,
        env: "RUNWAY_PROXY_PUBLIC_URL",
        flag: "public-url",
        doc: "Base URL the upstream uses to reach the webhook listener (auto: http://{webhook_listen}).",
        set: |c, raw| {
            c.public_url = match raw.trim() {
                "" | "auto" => None,
                url => {
                    // A path prefix is fine: webhooks come to {public_url}/hooks/runway/...
                    base_url(url)?;
                    Some(url.trim_end_matches('/').to_owned())
                }
            };
            Ok(())
        },
        show: |c| c.public_url.clone().unwrap_or_else(|| "auto".to_owned()),
    },
    key! {
        webhook_secret, restart,
        env: "RUNWAY_PROXY_WEBHOOK_SECRET",
        flag: "webhook-secret",
        doc: "whsec_<base64> secret that signs relayed webhooks (generated: made once, kept in data_dir).",
        set: |c, raw| {
            c.webhook_secret = match raw.trim() {
                "" | "generated" => None,
                secret => {
                    // Checked here so a bad secret stops the start, never the first delivery.
                    WebhookSigner::from_secret(secret)?;
                    Some(Secret::new(secret))
                }
            };
            Ok(())
        },
        show: |c| generated(&c.webhook_secret),
    },
    key! {
        callback.allow_private, live,
        env: "RUNWAY_PROXY_ALLOW_PRIVATE_CALLBACKS",
        flag: "allow-private-callbacks",
        doc: "Let callback_url point at loopback, private and other internal addresses.",
        parse: boolean,
        show: |c| c.callback.allow_private.to_string(),
    },
    key! {
        callback.allowed_hosts, live,
        env: "RUNWAY_PROXY_CALLBACK_ALLOWED_HOSTS",
        flag: "callback-allowed-hosts",
        doc: "Only these callback hosts, comma-separated (*.example.com for subdomains).",
        set: |c, raw| {
            c.callback.allowed_hosts = match raw.trim() {
                "" | "any" | "*" => Vec::new(),
                hosts => hosts
                    .split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect(),
            };
            Ok(())
        },
        show: |c| match c.callback.allowed_hosts.as_slice() {
            [] => "any".to_owned(),
            hosts => hosts.join(","),
        },
    },
    key! {
        callback.token_keys, live,
        env: "RUNWAY_PROXY_CALLBACK_TOKEN_KEYS",
        flag: "callback-token-keys",
        doc: "Keys of callback route tokens, id:secret,... (newest id mints; generated: kept in data_dir).",
        set: |c, raw| {
            c.callback.token_keys = match raw.trim() {
                "" | "generated" => None,
                keys => {
                    Keyring::parse(keys)?;
                    Some(Secret::new(keys))
                }
            };
            Ok(())
        },
        show: |c| generated(&c.callback.token_keys),
    },
    key! {
        callback.body_limit, restart,
        env: "RUNWAY_PROXY_CALLBACK_BODY_LIMIT",
        flag: "callback-body-limit",
        doc: "Largest submission body rewritten, and largest webhook body accepted.",
        parse: size,
        show: |c| show_size(c.callback.body_limit),
    },
    key! {
        callback.token_lifetime, restart,
        env: "RUNWAY_PROXY_CALLBACK_TOKEN_LIFETIME",
        flag: "callback-token-lifetime",
        doc: "How long a callback route token is honoured after it was minted (webhooks with older ones get 404).",
        parse: positive_duration,
        show: |c| duration::format(c.callback.token_lifetime),
    },
    key! {
        delivery.schedule, live,
        env: "RUNWAY_PROXY_DELIVERY_SCHEDULE",
        flag: "delivery-schedule",
        doc: "Wait before each delivery attempt (with jitter); then a dead letter.",
        parse: schedule,
        show: |c| show_schedule(&c.delivery.schedule),
    },
    key! {
        delivery.timeout, live,
        env: "RUNWAY_PROXY_DELIVERY_TIMEOUT",
        flag: "delivery-timeout",
        doc: "Time allowed for one delivery attempt.",
        parse: positive_duration,
        show: |c| duration::format(c.delivery.timeout),
    },
    key! {
        delivery.workers, live,
        env: "RUNWAY_PROXY_DELIVERY_WORKERS",
        flag: "delivery-workers",
        doc: "Delivery workers (each sends up to 16 webhooks at once).",
        set: |c, raw| {
            c.delivery.workers = count(raw)? as usize;
            Ok(())
        },
        show: |c| c.delivery.workers.to_string(),
    },
    key! {
        delivery.retry_after_cap, live,
        env: "RUNWAY_PROXY_DELIVERY_RETRY_AFTER_CAP",
        flag: "delivery-retry-after-cap",
        doc: "The longest a subscriber's Retry-After can push a delivery back.",
        parse: duration::parse,
        show: |c| duration::format(c.delivery.retry_after_cap),
    },
    key! {
        watch.poll_interval, restart,
        env: "RUNWAY_PROXY_TASK_POLL_INTERVAL",
        flag: "task-poll-interval",
        doc: "How often an official-format task is polled for its status, and an overdue reverse-format one read from the feed (with jitter).",
        parse: positive_duration,
        show: |c| duration::format(c.watch.poll_interval),
    },
    key! {
        watch.recover_after, restart,
        env: "RUNWAY_PROXY_RECOVER_AFTER",
        flag: "recover-after",
        doc: "How long a reverse-format task may go without its final callback before its result is read from the feed.",
        parse: positive_duration,
        show: |c| duration::format(c.watch.recover_after),
    },
    key! {
        watch.official_callback_url, restart,
        env: "RUNWAY_PROXY_OFFICIAL_CALLBACK_URL",
        flag: "official-callback-url",
        doc: "Subscriber of official-format tasks whose submission names none with x-runway-proxy-callback-url (none: their events are not relayed; they are still followed to their end for the ledger).",
        set: |c, raw| {
            c.watch.official_callback_url = match raw.trim() {
                "" | "none" => None,
                url => Some(url.to_owned()),
            };
            Ok(())
        },
        show: |c| {
            c.watch
                .official_callback_url
                .clone()
                .unwrap_or_else(|| "none".to_owned())
        },
    },
    key! {
        watch.confirm_callbacks, restart,
        env: "RUNWAY_PROXY_CONFIRM_CALLBACKS",
        flag: "confirm-callbacks",
        doc: "Relay a reverse-format task's final callback only once a feed read agrees (callbacks are not signed).",
        parse: boolean,
        show: |c| c.watch.confirm_callbacks.to_string(),
    },
    key! {
        watch.ledger_retention, restart,
        env: "RUNWAY_PROXY_LEDGER_RETENTION",
        flag: "ledger-retention",
        doc: "How long the ledger keeps a finished task's record (for /-/usage and the budgets; at least guard.budget_window).",
        parse: positive_duration,
        show: |c| duration::format(c.watch.ledger_retention),
    },
];

//! The rule table that turns one attempt's outcome into success, retry or fail.

use std::time::Duration;

use http::StatusCode;
use regex::Regex;
use serde::Deserialize;

use crate::duration;
use crate::envelope::{Code, Envelope};
use crate::route::RouteClass;
use crate::settings::setters;

/// What to do with an attempt's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The call succeeded: return the response.
    Success,
    /// The call was not accepted and may be tried again.
    Retry,
    /// The call failed for good: return the response as it is.
    Fail,
}

impl Action {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Success => "success",
            Action::Retry => "retry",
            Action::Fail => "fail",
        }
    }
}

/// One row of the rule table. It matches when every condition it sets holds; a rule
/// with no condition at all is refused when the table is built.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    name: String,
    status: Vec<u16>,
    code: Vec<CodeMatch>,
    msg_contains: Option<String>,
    msg_regex: Option<MsgRegex>,
    route_class: Vec<RouteClass>,
    action: Action,
    delay: Option<Duration>,
    max_attempts: Option<u32>,
}

/// A compiled regex, equal to another when their patterns are.
#[derive(Clone, Debug)]
struct MsgRegex(Regex);

impl PartialEq for MsgRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

#[derive(Clone, Debug, PartialEq)]
enum CodeMatch {
    Int(i64),
    Str(String),
}

impl CodeMatch {
    fn matches(&self, code: &Code<'_>) -> bool {
        match (self, code) {
            (CodeMatch::Int(want), Code::Int(got)) => want == got,
            (CodeMatch::Str(want), Code::Str(got)) => want.eq_ignore_ascii_case(got),
            _ => false,
        }
    }
}

impl Rule {
    /// A rule named `name` with the given action and no condition yet.
    pub fn new(name: impl Into<String>, action: Action) -> Self {
        Rule {
            name: name.into(),
            status: Vec::new(),
            code: Vec::new(),
            msg_contains: None,
            msg_regex: None,
            route_class: Vec::new(),
            action,
            delay: None,
            max_attempts: None,
        }
    }

    /// Match these HTTP statuses.
    pub fn status(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.status.extend(statuses);
        self
    }

    /// Match these numeric envelope codes.
    pub fn codes(mut self, codes: impl IntoIterator<Item = i64>) -> Self {
        self.code.extend(codes.into_iter().map(CodeMatch::Int));
        self
    }

    /// Match this textual envelope code (case-insensitive).
    pub fn code_str(mut self, code: impl Into<String>) -> Self {
        self.code.push(CodeMatch::Str(code.into()));
        self
    }

    setters! {
        /// Match when `msg` contains `needle`, ignoring ASCII case.
        msg_contains(needle: impl Into<String>) => msg_contains = Some(needle.into());
        /// Match when `msg` matches `regex`.
        msg_regex(regex: Regex) => msg_regex = Some(MsgRegex(regex));
    }

    /// Apply only to these route classes.
    pub fn route_class(mut self, classes: impl IntoIterator<Item = RouteClass>) -> Self {
        self.route_class.extend(classes);
        self
    }

    setters! {
        /// On retry, wait at least this long.
        delay(delay: Duration) => delay = Some(delay);
        /// On retry, allow at most this many attempts in all (counting the first) for
        /// outcomes this rule matched, below the policy's overall maximum.
        max_attempts(attempts: u32) => max_attempts = Some(attempts);
    }

    /// The rule's name, as shown in logs and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn has_condition(&self) -> bool {
        !self.status.is_empty()
            || !self.code.is_empty()
            || self.msg_contains.is_some()
            || self.msg_regex.is_some()
            || !self.route_class.is_empty()
    }

    fn matches(&self, class: RouteClass, status: StatusCode, envelope: Option<&Envelope<'_>>) -> bool {
        if !self.route_class.is_empty() && !self.route_class.contains(&class) {
            return false;
        }
        if !self.status.is_empty() && !self.status.contains(&status.as_u16()) {
            return false;
        }
        let code = envelope.and_then(|e| e.code.as_ref());
        if !self.code.is_empty() && !code.is_some_and(|code| self.code.iter().any(|m| m.matches(code))) {
            return false;
        }
        let msg = envelope.and_then(|e| e.msg.as_deref());
        let contains = self
            .msg_contains
            .as_ref()
            .is_none_or(|needle| msg.is_some_and(|msg| contains_ignore_ascii_case(msg, needle)));
        let regex = self
            .msg_regex
            .as_ref()
            .is_none_or(|regex| msg.is_some_and(|msg| regex.0.is_match(msg)));
        contains && regex
    }
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    let needle = needle.as_bytes();
    needle.is_empty()
        || haystack
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The statuses and codes CometAPI and Runway document as worth retrying.
pub const RETRYABLE: [u16; 6] = [429, 500, 502, 503, 504, 524];
/// The statuses and codes that mean the request or the account is wrong.
pub const CLIENT_ERRORS: [u16; 5] = [400, 401, 403, 404, 405];

/// The default rules, from CometAPI's and Runway's documented error codes.
pub fn default_rules() -> Vec<Rule> {
    let retryable = RETRYABLE.iter().map(|&c| i64::from(c));
    let client_errors = CLIENT_ERRORS.iter().map(|&c| i64::from(c));
    vec![
        // A 500 that says invalid_request will fail the same way every time, whether it
        // says so in msg or in an OpenAI-style error.code.
        Rule::new("invalid-request", Action::Fail).msg_contains("invalid_request"),
        Rule::new("invalid-request-code", Action::Fail).code_str("invalid_request"),
        // The feed doesn't know a task for a few seconds after its creation.
        Rule::new("task-not-exist", Action::Retry)
            .route_class([RouteClass::Read])
            .msg_contains("task_not_exist")
            .delay(Duration::from_secs(3))
            .max_attempts(4),
        Rule::new("success-code", Action::Success)
            .codes([200])
            .code_str("success"),
        Rule::new("retryable-code", Action::Retry).codes(retryable),
        Rule::new("retryable-status", Action::Retry).status(RETRYABLE),
        Rule::new("client-error-code", Action::Fail).codes(client_errors),
        Rule::new("client-error-status", Action::Fail).status(CLIENT_ERRORS),
    ]
}

/// A retry rule as written in the config file (`[[retry.rules]]`).
///
/// ```toml
/// [[retry.rules]]
/// name = "quota-is-final"       # shown in logs and metrics
/// code = [500, "error"]         # envelope codes (numbers or strings)
/// status = [200]                # HTTP statuses
/// msg_contains = "quota"        # case-insensitive substring of msg
/// msg_regex = "(?i)^quota"      # or a regular expression
/// route_class = ["submission"]  # submission, read or other
/// action = "fail"               # success, retry or fail
/// delay = "5s"                  # retry only: wait at least this long
/// max_attempts = 3              # retry only: cap on attempts for this outcome
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    name: Option<String>,
    #[serde(default)]
    status: Vec<u16>,
    #[serde(default)]
    code: Vec<CodeSpec>,
    msg_contains: Option<String>,
    msg_regex: Option<String>,
    #[serde(default)]
    route_class: Vec<String>,
    action: Action,
    delay: Option<String>,
    max_attempts: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum CodeSpec {
    Int(i64),
    Str(String),
}

/// Why a rule from the config file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// `msg_regex` does not compile.
    #[error("msg_regex {pattern:?} is not a valid regex: {problem}")]
    BadRegex {
        /// The pattern.
        pattern: String,
        /// The regex compiler's complaint.
        problem: String,
    },
    /// A route class other than `submission`, `read` or `other`.
    #[error("route_class {0:?} is not submission, read or other")]
    BadRouteClass(String),
    /// `delay` is not a duration.
    #[error("delay: {0}")]
    BadDelay(#[from] crate::duration::DurationError),
    /// `max_attempts = 0`.
    #[error("max_attempts must be at least 1")]
    ZeroAttempts,
    /// A rule that would match every outcome.
    #[error("a rule needs at least one of status, code, msg_contains, msg_regex or route_class")]
    NoCondition,
}

impl RuleSpec {
    /// Check and compile the rule, which is rule number `index` of the file (named
    /// `user-rule-{index}` when it has no name).
    pub fn build(self, index: usize) -> Result<Rule, RuleError> {
        let name = self.name.unwrap_or_else(|| format!("user-rule-{index}"));
        let mut rule = Rule::new(name, self.action).status(self.status);
        for code in self.code {
            rule.code.push(match code {
                CodeSpec::Int(n) => CodeMatch::Int(n),
                CodeSpec::Str(s) => CodeMatch::Str(s),
            });
        }
        rule.msg_contains = self.msg_contains;
        if let Some(pattern) = self.msg_regex {
            let regex = Regex::new(&pattern).map_err(|e| RuleError::BadRegex {
                problem: e.to_string(),
                pattern: pattern.clone(),
            })?;
            rule.msg_regex = Some(MsgRegex(regex));
        }
        for class in self.route_class {
            rule.route_class.push(match class.as_str() {
                "submission" => RouteClass::Submission,
                "read" => RouteClass::Read,
                "other" => RouteClass::Other,
                _ => return Err(RuleError::BadRouteClass(class)),
            });
        }
        if let Some(delay) = self.delay {
            rule.delay = Some(duration::parse(&delay)?);
        }
        if let Some(max) = self.max_attempts {
            if max == 0 {
                return Err(RuleError::ZeroAttempts);
            }
            rule.max_attempts = Some(max);
        }
        if !rule.has_condition() {
            return Err(RuleError::NoCondition);
        }
        Ok(rule)
    }
}

/// The verdict on one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verdict<'a> {
    /// What to do.
    pub action: Action,
    /// The rule that decided (`"unrecognized"` when none matched).
    pub rule: &'a str,
    /// The rule's minimum wait before a retry.
    pub delay: Option<Duration>,
    /// The rule's cap on attempts.
    pub max_attempts: Option<u32>,
}

/// An ordered rule table: user rules first, then the defaults. First match wins.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            rules: default_rules(),
        }
    }
}

impl Rules {
    /// `user` rules, then the defaults.
    pub fn with_user_rules(user: Vec<Rule>) -> Self {
        let mut rules = user;
        rules.extend(default_rules());
        Rules { rules }
    }

    /// The names of the rules that retry (each a `reason` of `runway_proxy_retries_total`).
    pub fn retrying(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .filter(|rule| rule.action == Action::Retry)
            .map(|rule| rule.name.as_str())
    }

    /// The rules' names, in the order they are tried.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.name.as_str())
    }

    /// Only these rules, without the defaults.
    pub fn only(rules: Vec<Rule>) -> Self {
        Rules { rules }
    }

    /// Classify a response on a route of `class` with HTTP `status` and, when the body
    /// was a JSON object, its envelope fields.
    ///
    /// When no rule matches, a response is a success only when nothing in it says
    /// otherwise: an HTTP 2xx JSON object without an envelope `code` or `error` on a route
    /// that doesn't use the envelope (Runway's official format says failure with an
    /// `error` member), never on a reverse-format (`/runway/...`) route, whose success
    /// must be a success code. A body that is not a JSON object (an HTML page, a
    /// redirect) is never a success.
    pub fn classify<'a>(
        &'a self,
        class: RouteClass,
        path: &str,
        status: StatusCode,
        envelope: Option<&Envelope<'_>>,
    ) -> Verdict<'a> {
        if let Some(rule) = self
            .rules
            .iter()
            .find(|rule| rule.matches(class, status, envelope))
        {
            return Verdict {
                action: rule.action,
                rule: &rule.name,
                delay: rule.delay,
                max_attempts: rule.max_attempts,
            };
        }
        let envelope_route = path.starts_with("/runway/");
        let clean = envelope.is_some_and(|e| e.code.is_none() && !e.has_error);
        let action = if status.is_success() && !envelope_route && clean {
            Action::Success
        } else {
            Action::Fail
        };
        Verdict {
            action,
            rule: "unrecognized",
            delay: None,
            max_attempts: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(class: RouteClass, path: &str, status: u16, body: &str) -> (Action, String) {
        let rules = Rules::default();
        let envelope = Envelope::parse(body.as_bytes());
        let verdict = rules.classify(
            class,
            path,
            StatusCode::from_u16(status).unwrap(),
            envelope.as_ref(),
        );
        (verdict.action, verdict.rule.to_owned())
    }

    const GEN: &str = "/runway/pro/generate";

    #[test]
    fn defaults_follow_the_documented_codes() {
        use Action::*;
        let s = RouteClass::Submission;
        assert_eq!(
            classify(s, GEN, 200, r#"{"code":200,"msg":"success"}"#).0,
            Success
        );
        assert_eq!(classify(s, GEN, 200, r#"{"code":"success"}"#).0, Success);
        assert_eq!(
            classify(s, GEN, 200, r#"{"code":500,"msg":"system busy"}"#),
            (Retry, "retryable-code".into())
        );
        assert_eq!(classify(s, GEN, 200, r#"{"code":524,"msg":"timeout"}"#).0, Retry);
        assert_eq!(classify(s, GEN, 429, "").0, Retry);
        assert_eq!(classify(s, GEN, 503, "<html>").0, Retry);
        assert_eq!(
            classify(s, GEN, 500, r#"{"code":500,"msg":"invalid_request: bad"}"#).0,
            Fail
        );
        assert_eq!(
            classify(s, GEN, 200, r#"{"code":400,"msg":"callback_url_empty"}"#).0,
            Fail
        );
        for status in [400, 401, 403, 404, 405] {
            assert_eq!(classify(s, GEN, status, "{}").0, Fail, "{status}");
        }
        assert_eq!(
            classify(s, GEN, 200, r#"{"code":"error","msg":"?"}"#),
            (Fail, "unrecognized".into())
        );
        assert_eq!(
            classify(s, GEN, 200, "not json").0,
            Fail,
            "no success code, no success"
        );
    }

    #[test]
    fn official_format_succeeds_by_status() {
        let s = RouteClass::Submission;
        assert_eq!(
            classify(s, "/runwayml/v1/image_to_video", 200, r#"{"id":"x"}"#).0,
            Action::Success
        );
        assert_eq!(
            classify(s, "/runwayml/v1/image_to_video", 200, r#"{"error":"x"}"#).0,
            Action::Fail
        );
        assert_eq!(
            classify(s, "/runwayml/v1/image_to_video", 502, r#"{"error":"x"}"#).0,
            Action::Retry
        );
    }

    #[test]
    fn every_documented_shape_is_read() {
        use Action::*;
        let s = RouteClass::Submission;
        let official = "/runwayml/v1/image_to_video";
        let openai = r#"{"error":{"message":"bad ratio","type":"comet_api_error","code":"invalid_request"}}"#;
        assert_eq!(
            classify(s, GEN, 500, openai),
            (Fail, "invalid-request-code".into())
        );
        assert_eq!(classify(s, official, 500, openai).0, Fail, "never retried");
        assert_eq!(
            classify(s, GEN, 200, r#"{"code":"success","data":{"task_id":"t"}}"#).0,
            Success
        );
        let read = "/runwayml/v1/tasks/t";
        let bare = r#"{"id":"t","status":"SUCCEEDED","output":["https://x/v.mp4"]}"#;
        assert_eq!(classify(RouteClass::Read, read, 200, bare).0, Success);
        let wrapped = r#"{"code":"success","message":"","data":{"status":"SUCCEEDED","data":{"id":"t"}}}"#;
        assert_eq!(classify(RouteClass::Read, read, 200, wrapped).0, Success);
        let failed_task = r#"{"id":"t","status":"FAILED","failure":"x","failureCode":"INTERNAL"}"#;
        assert_eq!(
            classify(RouteClass::Read, read, 200, failed_task).0,
            Success,
            "reading a failed task succeeded"
        );
        assert_eq!(
            classify(s, official, 200, "<html>not found</html>").0,
            Fail,
            "HTML is never a success"
        );
        assert_eq!(
            classify(s, official, 302, "").0,
            Fail,
            "a redirect is never a success"
        );
        assert_eq!(
            classify(s, official, 200, "").0,
            Fail,
            "an empty body is not a task"
        );
    }

    #[test]
    fn task_not_exist_is_retried_on_reads_only() {
        let body = r#"{"code":404,"msg":"task_not_exist"}"#;
        let (action, rule) = classify(RouteClass::Read, "/runway/feed", 200, body);
        assert_eq!((action, rule.as_str()), (Action::Retry, "task-not-exist"));
        assert_eq!(classify(RouteClass::Submission, GEN, 200, body).0, Action::Fail);
    }

    #[test]
    fn user_rules_come_first() {
        let spec: RuleSpec =
            toml::from_str("code = [500]\nmsg_contains = \"QUOTA\"\naction = \"fail\"").unwrap();
        let rules = Rules::with_user_rules(vec![spec.build(0).unwrap()]);
        let envelope = Envelope::parse(br#"{"code":500,"msg":"daily quota exceeded"}"#).unwrap();
        let verdict = rules.classify(RouteClass::Submission, GEN, StatusCode::OK, Some(&envelope));
        assert_eq!((verdict.action, verdict.rule), (Action::Fail, "user-rule-0"));
        let envelope = Envelope::parse(br#"{"code":500,"msg":"busy"}"#).unwrap();
        let verdict = rules.classify(RouteClass::Submission, GEN, StatusCode::OK, Some(&envelope));
        assert_eq!(verdict.action, Action::Retry);
    }

    #[test]
    fn rule_specs_are_checked() {
        let build = |text: &str| {
            toml::from_str::<RuleSpec>(text)
                .map_err(|e| e.to_string())
                .and_then(|s| s.build(0).map_err(|e| e.to_string()))
        };
        assert!(build("action = \"retry\"").unwrap_err().contains("at least one"));
        assert!(
            build("msg_regex = \"(\"\naction = \"retry\"")
                .unwrap_err()
                .contains("not a valid regex")
        );
        assert!(
            build("route_class = [\"writes\"]\naction = \"retry\"")
                .unwrap_err()
                .contains("writes")
        );
        assert!(build("status = [200]\naction = \"maybe\"").is_err());
        assert!(
            build("status = [200]\naction = \"retry\"\ndelay = \"5\"")
                .unwrap_err()
                .contains("delay")
        );
        assert!(build("status = [200]\naction = \"retry\"\nbogus = 1").is_err());
    }
}

//! Property tests of the envelope parser and the retry classifier: no input makes them
//! panic, and nothing without a known success code counts as a success on a
//! reverse-format route.

use http::StatusCode;
use proptest::prelude::*;
use runway_proxy::envelope::Envelope;
use runway_proxy::retry::{Action, Rules};
use runway_proxy::route::RouteClass;
use serde_json::{Map, Value, json};

const ROUTES: [(RouteClass, &str); 3] = [
    (RouteClass::Submission, "/runway/pro/generate"),
    (RouteClass::Read, "/runway/feed"),
    (RouteClass::Submission, "/runway/pro/act_one"),
];

fn statuses() -> impl Strategy<Value = StatusCode> {
    (100u16..600).prop_map(|s| StatusCode::from_u16(s).unwrap())
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("success"),
            Just("SUCCESS"),
            Just("200"),
            Just("error"),
            Just("task_not_exist")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object that looks like an envelope: `code`, `msg`, `message`, `data`, `error`
/// present or not, each of any type.
fn envelope_object() -> impl Strategy<Value = Value> {
    let field = |name: &'static str| prop::option::of(json_value()).prop_map(move |v| (name, v));
    let code = prop_oneof![
        json_value(),
        (100i64..600).prop_map(Value::from),
        (100i64..600).prop_map(|c| Value::from(c.to_string())),
        Just(json!(200)),
        Just(json!("success")),
    ];
    (
        prop::option::of(code),
        field("msg"),
        field("message"),
        field("data"),
        field("error"),
    )
        .prop_map(|(code, msg, message, data, error)| {
            let mut object = Map::new();
            if let Some(code) = code {
                object.insert("code".into(), code);
            }
            for (name, value) in [msg, message, data, error] {
                if let Some(value) = value {
                    object.insert(name.into(), value);
                }
            }
            Value::Object(object)
        })
}

fn has_known_success_code(value: &Value) -> bool {
    match value.get("code") {
        Some(Value::Number(n)) => n.as_f64() == Some(200.0),
        Some(Value::String(s)) => {
            let digits = s.trim();
            let numeric =
                !digits.is_empty() && digits.len() < 19 && digits.bytes().all(|b| b.is_ascii_digit());
            s.eq_ignore_ascii_case("success") || (numeric && digits.parse::<i64>() == Ok(200))
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_and_never_succeed_without_a_code(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        status in statuses(),
        route in 0..ROUTES.len(),
    ) {
        let rules = Rules::default();
        let (class, path) = ROUTES[route];
        let envelope = Envelope::parse(&bytes);
        let verdict = rules.classify(class, path, status, envelope.as_ref());
        if envelope.as_ref().is_none_or(|e| !e.is_success()) {
            prop_assert_ne!(verdict.action, Action::Success);
        }
    }

    #[test]
    fn json_envelopes_succeed_only_with_a_success_code(
        value in envelope_object(),
        status in statuses(),
        route in 0..ROUTES.len(),
    ) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let envelope = Envelope::parse(&bytes).expect("a JSON object is an envelope");
        prop_assert_eq!(envelope.is_success(), has_known_success_code(&value), "{}", value);
        let (class, path) = ROUTES[route];
        let rules = Rules::default();
        let verdict = rules.classify(class, path, status, Some(&envelope));
        if !has_known_success_code(&value) {
            prop_assert_ne!(verdict.action, Action::Success, "{} under {}", value, status);
        }
    }

    #[test]
    fn any_json_value_parses_without_panic(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let parsed = Envelope::parse(&bytes);
        prop_assert_eq!(parsed.is_some(), value.is_object());
    }
}

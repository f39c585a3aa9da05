//! Property test: the callback_url rewrite changes the value and not one other byte,
//! whatever the field order, whitespace, escapes and numbers around it.

use proptest::prelude::*;
use runway_proxy::callback::CallbackUrl;
use serde_json::Value;

/// JSON text of a string, either as serde_json writes it or with every character escaped
/// as `\uXXXX` (surrogate pairs beyond the BMP), as some clients send.
fn string_text(s: &str, escape_all: bool) -> String {
    if !escape_all {
        return serde_json::to_string(s).unwrap();
    }
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        ".{0,10}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Whitespace JSON allows between tokens.
fn ws() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![Just(" "), Just("\n"), Just("\t"), Just("\r\n")], 0..3)
        .prop_map(|v| v.concat())
}

/// Numbers written the many ways JSON allows, which a parse-and-print would normalize.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.50e3"),
        Just("-0.0"),
        Just("1E+2"),
        Just("12345678901234567890"),
        Just("0.1000")
    ]
    .prop_map(str::to_owned)
}

#[derive(Debug, Clone)]
struct Doc {
    text: String,
    url: String,
}

fn document() -> impl Strategy<Value = Doc> {
    let entry = (
        "[a-zA-Z_é]{1,10}".prop_filter("not callback_url", |k| k != "callback_url"),
        prop_oneof![
            json_value().prop_map(|v| serde_json::to_string(&v).unwrap()),
            number_text()
        ],
        any::<bool>(),
        ws(),
        ws(),
    );
    (
        prop::collection::vec(entry, 0..6),
        any::<prop::sample::Index>(),
        "https://[a-z]{1,10}\\.example/[a-z0-9/?=&%-]{0,20}",
        any::<bool>(),
        ws(),
        ws(),
    )
        .prop_map(|(entries, at, url, escape_url, open_ws, close_ws)| {
            let mut members: Vec<String> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (key, value, escape_key, before, after) in entries {
                if seen.insert(key.clone()) {
                    members.push(format!(
                        "{before}{}{after}:{before}{value}{after}",
                        string_text(&key, escape_key)
                    ));
                }
            }
            let position = at.index(members.len() + 1);
            members.insert(
                position,
                format!("\"callback_url\" : {}", string_text(&url, escape_url)),
            );
            Doc {
                text: format!("{{{open_ws}{}{close_ws}}}", members.join(",")),
                url,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn only_the_callback_url_changes(doc in document()) {
        let original = doc.text.as_bytes();
        let found = CallbackUrl::find(original).unwrap().expect("callback_url found");
        let span = found.span();
        prop_assert_eq!(&found.url, &doc.url);
        let new_url = "http://127.0.0.1:8081/hooks/runway/AbC-_123";
        let rewritten = found.replace(original, new_url);
        let new_text = format!("\"{new_url}\"");
        // Every byte before and after the value is the same, in the same place.
        prop_assert_eq!(&rewritten[..span.start], &original[..span.start]);
        prop_assert_eq!(&rewritten[span.start..span.start + new_text.len()], new_text.as_bytes());
        prop_assert_eq!(&rewritten[span.start + new_text.len()..], &original[span.end..]);
        // And the result is the same document with the new URL.
        let mut expected: Value = serde_json::from_slice(original).unwrap();
        expected["callback_url"] = Value::from(new_url);
        prop_assert_eq!(serde_json::from_slice::<Value>(&rewritten).unwrap(), expected);
    }
}

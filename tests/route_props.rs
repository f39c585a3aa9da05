//! Property test of the canonical-path check: any spelling of a submission route that a
//! normalising server (merging `//`, resolving dot segments, decoding `%XX` once, dropping
//! `;params` or a trailing `/`) or case folding maps back to that route is either classed
//! a submission or refused, never forwarded as "other".

use http::Method;
use proptest::prelude::*;
use runway_proxy::route::{RouteClass, check_path};

const SUBMISSIONS: &[&str] = &[
    "/runway/pro/generate",
    "/runway/pro/video2video",
    "/runway/pro/act_one",
    "/runwayml/v1/image_to_video",
    "/runwayml/v1/video_to_video",
];

/// One change that a lenient server undoes. Positions are taken modulo the path's length.
#[derive(Clone, Debug)]
enum Spelling {
    /// A `/` doubled.
    EmptySegment(usize),
    /// `/.` inserted before a `/`.
    Dot(usize),
    /// `/{junk}/..` inserted before a `/`.
    DotDot(usize, String),
    /// A `/` or unreserved character percent-encoded (upper or lower hex).
    Encode(usize, bool),
    /// A letter in upper case.
    Upper(usize),
    /// `;{param}` after a segment.
    Param(usize, String),
    /// A trailing `/`.
    TrailingSlash,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        any::<usize>().prop_map(Spelling::EmptySegment),
        any::<usize>().prop_map(Spelling::Dot),
        (any::<usize>(), "[a-z0-9]{1,6}").prop_map(|(at, junk)| Spelling::DotDot(at, junk)),
        (any::<usize>(), any::<bool>()).prop_map(|(at, upper)| Spelling::Encode(at, upper)),
        any::<usize>().prop_map(Spelling::Upper),
        (any::<usize>(), "[a-z0-9=]{0,6}").prop_map(|(at, p)| Spelling::Param(at, p)),
        Just(Spelling::TrailingSlash),
    ]
}

/// Byte offsets of the `/`s of `path`.
fn slashes(path: &str) -> Vec<usize> {
    path.match_indices('/').map(|(i, _)| i).collect()
}

fn apply(path: &str, spelling: &Spelling) -> String {
    let mut out = path.to_owned();
    let slash = |at: usize| {
        let all = slashes(path);
        all[at % all.len()]
    };
    match spelling {
        Spelling::EmptySegment(at) => out.insert(slash(*at), '/'),
        Spelling::Dot(at) => out.insert_str(slash(*at), "/."),
        Spelling::DotDot(at, junk) => out.insert_str(slash(*at), &format!("/{junk}/..")),
        Spelling::Encode(at, upper) => {
            // Any byte but the leading `/` and bytes already part of an escape.
            let candidates: Vec<usize> = path
                .char_indices()
                .skip(1)
                .filter(|(_, c)| *c == '/' || c.is_ascii_alphanumeric() || "-._~".contains(*c))
                .filter(|(i, _)| {
                    !path[..*i].ends_with('%') && !path[i.saturating_sub(2)..*i].starts_with('%')
                })
                .map(|(i, _)| i)
                .collect();
            if let Some(&i) = candidates.get(at % candidates.len().max(1)) {
                let byte = path.as_bytes()[i];
                let escape = if *upper {
                    format!("%{byte:02X}")
                } else {
                    format!("%{byte:02x}")
                };
                out.replace_range(i..i + 1, &escape);
            }
        }
        Spelling::Upper(at) => {
            let letters: Vec<usize> = path
                .char_indices()
                .filter(|(_, c)| c.is_ascii_lowercase())
                .map(|(i, _)| i)
                .collect();
            if let Some(&i) = letters.get(at % letters.len().max(1)) {
                let upper = path[i..i + 1].to_ascii_uppercase();
                out.replace_range(i..i + 1, &upper);
            }
        }
        Spelling::Param(at, param) => {
            let all = slashes(path);
            // After a segment: before a `/` other than the first, or at the end.
            let end = match all.get(1 + at % all.len()) {
                Some(&i) => i,
                None => path.len(),
            };
            out.insert_str(end, &format!(";{param}"));
        }
        Spelling::TrailingSlash => out.push('/'),
    }
    out
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::POST),
        1 => Just(Method::from_bytes(b"post").unwrap()),
        1 => Just(Method::from_bytes(b"Post").unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn every_spelling_of_a_submission_is_classed_one_or_refused(
        route in prop::sample::select(SUBMISSIONS),
        spellings in prop::collection::vec(spelling(), 1..4),
        method in method(),
    ) {
        // Each change is applied to the path so far; a server undoes them in turn.
        let mut path = route.to_owned();
        for spelling in &spellings {
            path = apply(&path, spelling);
        }
        let refused = check_path(&method, &path).is_err();
        let class = RouteClass::of(&method, &path);
        prop_assert!(
            refused || class == RouteClass::Submission,
            "{path:?} ({method}) passed as {class:?}"
        );
    }

    #[test]
    fn canonical_routes_always_pass(route in prop::sample::select(SUBMISSIONS)) {
        prop_assert_eq!(check_path(&Method::POST, route), Ok(()));
        prop_assert_eq!(RouteClass::of(&Method::POST, route), RouteClass::Submission);
    }
}

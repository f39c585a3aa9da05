//! Which kind of CometAPI call a request is: a paid submission, a read, or anything else.
//!
//! The class decides how a request may be retried and which quota it draws from, so it is
//! computed once, from the method and path alone, before anything else looks at the request.
//!
//! A class is only as good as the path it is read from: an upstream that normalises paths
//! (merging `//`, resolving `/./` and `/../`, decoding `%2F` or `%70`, dropping `;params`
//! or a trailing `/`, folding case) would create a paid task from a spelling that an exact
//! comparison calls "other", and that request would skip the callback check, the
//! submission quota and the never-resubmit rule. [`check_path`] refuses every such
//! spelling of a CometAPI route before anything is sent; the sidecar calls it first.

use http::Method;

/// The kind of upstream call a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteClass {
    /// Creates a paid task: `POST /runway/pro/*` and the task-creating `POST /runwayml/v1/*`.
    Submission,
    /// Reads a task: `POST /runway/feed` and `GET /runwayml/v1/tasks/{id}`.
    Read,
    /// Everything else.
    Other,
}

impl RouteClass {
    /// Classify a request by method and path (the path without its query).
    pub fn of(method: &Method, path: &str) -> Self {
        if *method == Method::POST {
            if path == "/runway/feed" {
                return RouteClass::Read;
            }
            if non_empty_suffix(path, "/runway/pro/") {
                return RouteClass::Submission;
            }
            if let Some(rest) = path.strip_prefix("/runwayml/v1/") {
                // The official API's task-creating POSTs, by name. The rest (resources
                // like uploads and voices, and any the proxy does not know yet) are
                // `other`: as POSTs they are never sent twice either, but hold no task
                // slot and are not watched; an unknown one is counted
                // ([`unknown_official_post`]).
                if creates_task(rest) {
                    return RouteClass::Submission;
                }
            }
        } else if *method == Method::GET
            && (non_empty_suffix(path, "/runwayml/v1/tasks/")
                || non_empty_suffix(path, "/runwayml/v1/workflow_invocations/"))
        {
            return RouteClass::Read;
        }
        RouteClass::Other
    }

    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Submission => "submission",
            RouteClass::Read => "read",
            RouteClass::Other => "other",
        }
    }

    /// Every class, in a fixed order (for metrics).
    pub const ALL: [RouteClass; 3] = [RouteClass::Submission, RouteClass::Read, RouteClass::Other];
}

/// The official API's POSTs that create a task (`/runwayml/v1/{name}`), as the official
/// SDKs call them; and, in [`OFFICIAL_TASK_PREFIXES`], those under a prefix.
pub const OFFICIAL_TASK_POSTS: &[&str] = &[
    "image_to_video",
    "text_to_video",
    "video_to_video",
    "text_to_image",
    "character_performance",
    "image_upscale",
    "video_upscale",
    "text_to_speech",
    "speech_to_speech",
    "sound_effect",
    "voice_dubbing",
    "voice_isolation",
    "video_to_audio",
    "video_to_hdr",
    "avatar_videos",
];

/// Task-creating POSTs by prefix: `generate/{video,image,audio}`, the recipes, and
/// `workflows/{id}` (a workflow run, read at `workflow_invocations/{id}`).
pub const OFFICIAL_TASK_PREFIXES: &[&str] = &["generate/", "recipes/", "workflows/"];

/// The official API's POSTs that create no task (as the official SDKs call them): their
/// answers are resources, not tasks, so they hold no task slot and are not watched.
pub const OFFICIAL_NON_TASK_POSTS: &[&str] = &[
    "uploads",
    "organization/usage",
    "voices",
    "voices/preview",
    "avatars",
    "documents",
    "routers",
    "realtime_sessions",
];

/// Whether `POST /runwayml/v1/{rest}` creates a task.
fn creates_task(rest: &str) -> bool {
    OFFICIAL_TASK_POSTS.contains(&rest)
        || OFFICIAL_TASK_PREFIXES.iter().any(|prefix| {
            rest.strip_prefix(prefix)
                .is_some_and(|name| !name.is_empty() && !name.contains('/'))
        })
}

/// The endpoint of a `POST /runwayml/v1/...` the proxy does not know (neither a task's
/// nor a known resource's): its first path segment, so operators see new endpoints in
/// the metrics. `None` for anything else.
pub fn unknown_official_post<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    if *method != Method::POST {
        return None;
    }
    let rest = path.strip_prefix("/runwayml/v1/")?;
    let known = rest.is_empty()
        || rest.starts_with("tasks")
        || creates_task(rest)
        || OFFICIAL_NON_TASK_POSTS.contains(&rest);
    (!known).then(|| rest.split('/').next().unwrap_or(rest))
}

/// Why a request's path was refused: it spells a CometAPI route in a form that is not the
/// canonical one, which no legitimate client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathProblem {
    /// `//`: an empty segment.
    #[error("an empty path segment (//)")]
    EmptySegment,
    /// `/./` or `/../`.
    #[error("a dot segment (/. or /..)")]
    DotSegment,
    /// A percent-encoded `/` or a percent-encoded character that needs no encoding.
    #[error("a percent-encoded / or unreserved character")]
    Encoded,
    /// A `;parameter` inside a segment (some servers drop it).
    #[error("a ;parameter in a path segment")]
    Parameter,
    /// A trailing `/` on a route.
    #[error("a trailing /")]
    TrailingSlash,
    /// The path or the method matches a route only when letter case is ignored.
    #[error("letter case that differs from the route's")]
    Case,
}

/// Check that a request's path is the canonical spelling of its route.
///
/// `Err` when the path (or the method) reaches a CometAPI route (a submission or a read)
/// only after a normalisation some server applies: merging empty segments, resolving dot
/// segments, decoding `%2F` or unreserved characters once, dropping `;params`, dropping a
/// trailing `/`, or folding letter case. Paths that normalise to no CometAPI route are
/// not this check's concern and pass whatever their form.
///
/// ```
/// use http::Method;
/// use runway_proxy::route::{PathProblem, check_path};
///
/// assert_eq!(check_path(&Method::POST, "/runway/pro/generate"), Ok(()));
/// assert_eq!(check_path(&Method::POST, "/runway//pro/generate"), Err(PathProblem::EmptySegment));
/// assert_eq!(check_path(&Method::POST, "/Runway/pro/generate"), Err(PathProblem::Case));
/// assert_eq!(check_path(&Method::GET, "/v1//models"), Ok(()));
/// ```
pub fn check_path(method: &Method, path: &str) -> Result<(), PathProblem> {
    // The common case costs one pass over the bytes and no allocation.
    let bytes = path.as_bytes();
    let suspicious = bytes.len() > 1 && bytes.ends_with(b"/")
        || bytes
            .windows(2)
            .any(|w| w == b"//" || w == b"/." || w[0] == b'%' || w[0] == b';')
        || bytes.last() == Some(&b'%')
        || bytes.last() == Some(&b';')
        || (bytes.len() >= 7 && bytes[..7].eq_ignore_ascii_case(b"/runway") && has_upper(bytes))
        || (*method != Method::POST && *method != Method::GET && is_post_or_get(method));
    if !suspicious {
        return Ok(());
    }
    let method_folded = if is_post_or_get(method) {
        if method.as_str().eq_ignore_ascii_case("POST") {
            Method::POST
        } else {
            Method::GET
        }
    } else {
        method.clone()
    };
    let (normal, problem) = normalise(path);
    let folded = normal.to_ascii_lowercase();
    let class = RouteClass::of(&method_folded, &folded);
    if class == RouteClass::Other {
        return Ok(());
    }
    if let Some(problem) = problem {
        return Err(problem);
    }
    if RouteClass::of(method, path) != class {
        return Err(PathProblem::Case);
    }
    Ok(())
}

fn has_upper(bytes: &[u8]) -> bool {
    bytes.iter().any(u8::is_ascii_uppercase)
}

/// `post`, `Get` and the like: an extension method as far as `http` is concerned, the
/// real one to a server that folds case.
fn is_post_or_get(method: &Method) -> bool {
    let name = method.as_str();
    name.eq_ignore_ascii_case("POST") || name.eq_ignore_ascii_case("GET")
}

/// The path as a lenient server would read it, and the first thing that differed.
fn normalise(path: &str) -> (String, Option<PathProblem>) {
    let mut problem = None;
    let mut note = |p: PathProblem| {
        problem.get_or_insert(p);
    };
    let decoded = decode_once(path, &mut note);
    let mut segments: Vec<&str> = Vec::new();
    let mut pieces = decoded.split('/').skip(1).peekable();
    while let Some(segment) = pieces.next() {
        let segment = match segment.split_once(';') {
            Some((kept, _)) => {
                note(PathProblem::Parameter);
                kept
            }
            None => segment,
        };
        match segment {
            "" if pieces.peek().is_none() && !segments.is_empty() => note(PathProblem::TrailingSlash),
            "" => note(PathProblem::EmptySegment),
            "." => note(PathProblem::DotSegment),
            ".." => {
                note(PathProblem::DotSegment);
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    (normal, problem)
}

/// Decode `%XX` once where it stands for `/` or an unreserved character (RFC 3986:
/// letters, digits, `-`, `.`, `_`, `~`), which is what a normalising server does.
fn decode_once(path: &str, note: &mut impl FnMut(PathProblem)) -> String {
    if !path.contains('%') {
        return path.to_owned();
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = bytes.get(i + 1..i + 3).and_then(hex_byte)
            && (byte == b'/' || byte.is_ascii_alphanumeric() || b"-._~".contains(&byte))
        {
            note(PathProblem::Encoded);
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    // Only ASCII was decoded into ASCII, so the bytes are as valid UTF-8 as the path was.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

fn non_empty_suffix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

impl std::fmt::Display for RouteClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_runway_routes() {
        for (method, path, class) in [
            (Method::POST, "/runway/pro/generate", RouteClass::Submission),
            (Method::POST, "/runway/pro/video2video", RouteClass::Submission),
            (Method::POST, "/runway/pro/act_one", RouteClass::Submission),
            (
                Method::POST,
                "/runwayml/v1/image_to_video",
                RouteClass::Submission,
            ),
            (
                Method::POST,
                "/runwayml/v1/video_to_video",
                RouteClass::Submission,
            ),
            (Method::POST, "/runway/feed", RouteClass::Read),
            (Method::GET, "/runwayml/v1/tasks/abc", RouteClass::Read),
            (
                Method::GET,
                "/runwayml/v1/workflow_invocations/abc",
                RouteClass::Read,
            ),
            (Method::DELETE, "/runwayml/v1/tasks/abc", RouteClass::Other),
        ] {
            assert_eq!(RouteClass::of(&method, path), class, "{method} {path}");
        }
        // Every task-creating POST the official SDK makes, and every one that creates none.
        for task in [
            "text_to_video",
            "text_to_image",
            "character_performance",
            "image_upscale",
            "video_upscale",
            "text_to_speech",
            "speech_to_speech",
            "sound_effect",
            "voice_dubbing",
            "voice_isolation",
            "video_to_audio",
            "video_to_hdr",
            "generate/video",
            "generate/image",
            "generate/audio",
            "recipes/product_shot",
            "avatar_videos",
            "workflows/wf-1",
        ] {
            let path = format!("/runwayml/v1/{task}");
            assert_eq!(
                RouteClass::of(&Method::POST, &path),
                RouteClass::Submission,
                "{path}"
            );
        }
        for resource in OFFICIAL_NON_TASK_POSTS {
            let path = format!("/runwayml/v1/{resource}");
            assert_eq!(RouteClass::of(&Method::POST, &path), RouteClass::Other, "{path}");
            assert_eq!(unknown_official_post(&Method::POST, &path), None, "{path}");
        }
        // One the proxy does not know: never sent twice (a POST of class other), held
        // to no guard, and named for the metrics.
        let new = "/runwayml/v1/brand_new_thing/x";
        assert_eq!(RouteClass::of(&Method::POST, new), RouteClass::Other);
        assert_eq!(unknown_official_post(&Method::POST, new), Some("brand_new_thing"));
        assert_eq!(
            unknown_official_post(&Method::POST, "/runwayml/v1/image_to_video"),
            None
        );
        assert_eq!(unknown_official_post(&Method::GET, new), None);
    }

    #[test]
    fn canonical_routes_pass_and_other_spellings_are_refused() {
        let post = Method::POST;
        for path in [
            "/runway/pro/generate",
            "/runway/feed",
            "/runwayml/v1/image_to_video",
            "/runway/pro/GenerateX",
        ] {
            assert_eq!(check_path(&post, path), Ok(()), "{path}");
        }
        assert_eq!(check_path(&Method::GET, "/runwayml/v1/tasks/ABC%20d"), Ok(()));
        let refused: [(PathProblem, &[&str]); 6] = [
            (
                PathProblem::TrailingSlash,
                &["/runway/pro/generate/", "/runway/feed/"],
            ),
            (
                PathProblem::EmptySegment,
                &["//runway/pro/generate", "/runway//pro/generate"],
            ),
            (
                PathProblem::DotSegment,
                &["/runway/pro/./generate", "/runway/x/../pro/generate"],
            ),
            (
                PathProblem::Case,
                &[
                    "/Runway/pro/generate",
                    "/runway/PRO/generate",
                    "/RUNWAYML/v1/image_to_video",
                ],
            ),
            (
                PathProblem::Encoded,
                &["/runway%2Fpro/generate", "/runway/%70ro/generate"],
            ),
            (PathProblem::Parameter, &["/runway/pro;x=1/generate"]),
        ];
        for (problem, paths) in refused {
            for path in paths {
                assert_eq!(check_path(&post, path), Err(problem), "{path}");
            }
        }
        let lower_post = Method::from_bytes(b"post").unwrap();
        assert_eq!(
            check_path(&lower_post, "/runway/pro/generate"),
            Err(PathProblem::Case)
        );
    }

    #[test]
    fn odd_spellings_of_other_paths_are_not_this_checks_business() {
        for path in ["/v1//models", "/", "//", "/a/./b/", "/%41", "/x;y", "/runway%zz"] {
            assert_eq!(check_path(&Method::POST, path), Ok(()), "{path}");
        }
    }

    #[test]
    fn everything_else_is_other() {
        for (method, path) in [
            (Method::GET, "/runway/pro/generate"),
            (Method::POST, "/runway/pro/"),
            (Method::POST, "/runway/pro/a/b"),
            (Method::POST, "/runwayml/v1/tasks/abc/cancel"),
            (Method::DELETE, "/runwayml/v1/tasks/abc"),
            (Method::GET, "/runwayml/v1/tasks/"),
            (Method::POST, "/v1/chat/completions"),
        ] {
            assert_eq!(
                RouteClass::of(&method, path),
                RouteClass::Other,
                "{method} {path}"
            );
        }
    }
}

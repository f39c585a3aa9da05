//! Which kind of CometAPI call a request is: a paid submission, a read, or anything else.
//!
//! The class decides how a request may be retried and which quota it draws from, so it is
//! computed once, from the method and path alone, before anything else looks at the request.

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
                // Every POST on the official API creates a task except those on an
                // existing task (cancel, delete), which live under `tasks/`.
                if !rest.is_empty() && !rest.starts_with("tasks") {
                    return RouteClass::Submission;
                }
            }
        } else if *method == Method::GET && non_empty_suffix(path, "/runwayml/v1/tasks/") {
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
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(
            RouteClass::of(&post, "/runway/pro/generate"),
            RouteClass::Submission
        );
        assert_eq!(
            RouteClass::of(&post, "/runway/pro/video2video"),
            RouteClass::Submission
        );
        assert_eq!(
            RouteClass::of(&post, "/runway/pro/act_one"),
            RouteClass::Submission
        );
        assert_eq!(
            RouteClass::of(&post, "/runwayml/v1/image_to_video"),
            RouteClass::Submission
        );
        assert_eq!(
            RouteClass::of(&post, "/runwayml/v1/video_to_video"),
            RouteClass::Submission
        );
        assert_eq!(RouteClass::of(&post, "/runway/feed"), RouteClass::Read);
        assert_eq!(RouteClass::of(&get, "/runwayml/v1/tasks/abc"), RouteClass::Read);
    }

    #[test]
    fn everything_else_is_other() {
        assert_eq!(
            RouteClass::of(&Method::GET, "/runway/pro/generate"),
            RouteClass::Other
        );
        assert_eq!(RouteClass::of(&Method::POST, "/runway/pro/"), RouteClass::Other);
        assert_eq!(
            RouteClass::of(&Method::POST, "/runway/pro/a/b"),
            RouteClass::Other
        );
        assert_eq!(
            RouteClass::of(&Method::POST, "/runwayml/v1/tasks/abc/cancel"),
            RouteClass::Other
        );
        assert_eq!(
            RouteClass::of(&Method::DELETE, "/runwayml/v1/tasks/abc"),
            RouteClass::Other
        );
        assert_eq!(
            RouteClass::of(&Method::GET, "/runwayml/v1/tasks/"),
            RouteClass::Other
        );
        assert_eq!(
            RouteClass::of(&Method::POST, "/v1/chat/completions"),
            RouteClass::Other
        );
    }
}

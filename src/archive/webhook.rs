//! Which outputs a webhook names, and the webhook the subscriber gets once they are
//! archived: the same shape, each archived URL replaced by its copy's link, and what
//! happened said in added fields.
//!
//! - Reverse format (CometAPI's callback and feed): `video_url`, `poster`, `last_frame`
//!   of a task whose `status` is `"3"`.
//! - Official format (`GET /v1/tasks/{id}`): every `output[]` entry of a `SUCCEEDED` task.
//!
//! Added to an archived webhook: `runway_proxy_archive_status: "archived"` and
//! `runway_proxy_archive`, one entry per output (`field`, `original`, `url`, `bytes`,
//! `sha256`, `content_type`). When archiving failed: `runway_proxy_archive_status:
//! "failed"` and `runway_proxy_archive_reason`, and every URL stays the original.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::Archived;

/// Where in a webhook an output's URL is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OutputField {
    /// A top-level field of the reverse format (`video_url`, `poster`, `last_frame`).
    Named(&'static str),
    /// An entry of the official format's `output` array.
    Output(usize),
}

impl OutputField {
    /// How the field is written in `runway_proxy_archive` (`video_url`, `output[0]`).
    pub fn label(&self) -> String {
        match self {
            OutputField::Named(name) => (*name).to_owned(),
            OutputField::Output(at) => format!("output[{at}]"),
        }
    }
}

/// One output a webhook names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRef {
    /// Where it is.
    pub field: OutputField,
    /// Its URL.
    pub url: String,
}

impl OutputRef {
    /// The extension its key gets: the URL path's, when short and plain, else `bin`.
    pub fn extension(&self) -> &str {
        let path = self.url.split(['?', '#']).next().unwrap_or_default();
        let file = path.rsplit('/').next().unwrap_or_default();
        match file.rsplit_once('.') {
            Some((_, ext))
                if (1..=5).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                ext
            }
            _ => "bin",
        }
    }
}

/// The reverse format's output fields, in the order they are archived.
const NAMED: [&str; 3] = ["video_url", "poster", "last_frame"];

/// The outputs of a succeeded task's webhook; empty for any other status or shape.
pub fn outputs(body: &Value) -> Vec<OutputRef> {
    let Some(fields) = body.as_object() else {
        return Vec::new();
    };
    let url = |value: &Value| value.as_str().filter(|u| !u.is_empty()).map(str::to_owned);
    if fields.get("status").and_then(Value::as_str) == Some("3") {
        return NAMED
            .iter()
            .filter_map(|name| {
                fields.get(*name).and_then(url).map(|url| OutputRef {
                    field: OutputField::Named(name),
                    url,
                })
            })
            .collect();
    }
    if fields.get("status").and_then(Value::as_str) == Some("SUCCEEDED") {
        return fields
            .get("output")
            .and_then(Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .enumerate()
                    .filter_map(|(at, value)| {
                        url(value).map(|url| OutputRef {
                            field: OutputField::Output(at),
                            url,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
    }
    Vec::new()
}

/// One output's copy, and the link the subscriber gets for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linked {
    /// The output.
    pub output: OutputRef,
    /// Its copy.
    pub copy: Archived,
    /// Where the subscriber reads the copy.
    pub link: String,
}

/// Point each archived output of `body` at its link and say so; the fields it adds are
/// described in the module docs.
pub fn archived(body: &mut Value, copies: &[Linked]) {
    let Some(fields) = body.as_object_mut() else {
        return;
    };
    let mut entries = Vec::with_capacity(copies.len());
    for linked in copies {
        set(fields, &linked.output.field, &linked.link);
        entries.push(json!({
            "field": linked.output.field.label(),
            "original": linked.output.url,
            "url": linked.link,
            "bytes": linked.copy.bytes,
            "sha256": linked.copy.sha256,
            "content_type": linked.copy.content_type,
        }));
    }
    fields.insert("runway_proxy_archive_status".into(), Value::from("archived"));
    fields.insert("runway_proxy_archive".into(), Value::Array(entries));
}

/// Say that archiving failed, and why; the URLs stay the originals.
pub fn failed(body: &mut Value, reason: &str) {
    if let Some(fields) = body.as_object_mut() {
        fields.insert("runway_proxy_archive_status".into(), Value::from("failed"));
        fields.insert("runway_proxy_archive_reason".into(), Value::from(reason));
    }
}

fn set(fields: &mut Map<String, Value>, field: &OutputField, link: &str) {
    match field {
        OutputField::Named(name) => {
            fields.insert((*name).to_owned(), Value::from(link));
        }
        OutputField::Output(at) => {
            if let Some(entry) = fields
                .get_mut("output")
                .and_then(Value::as_array_mut)
                .and_then(|entries| entries.get_mut(*at))
            {
                *entry = Value::from(link);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ObjectKey;
    use super::*;

    fn copy(bytes: u64) -> Archived {
        Archived {
            source: "https://cdn.example/x".into(),
            key: ObjectKey::from_stored("2026/12/06/t1/0-ab.mp4"),
            bytes,
            sha256: "ab".repeat(32),
            content_type: Some("video/mp4".into()),
        }
    }

    #[test]
    fn a_succeeded_reverse_callback_names_its_three_outputs() {
        let body = json!({"task_id": "t1", "status": "3", "video_url": "https://c/v.mp4?sig=1",
                          "poster": "https://c/p.png", "last_frame": "", "point": "320"});
        let found = outputs(&body);
        assert_eq!(found.len(), 2, "an empty URL is no output: {found:?}");
        assert_eq!(found[0].field, OutputField::Named("video_url"));
        assert_eq!(found[0].extension(), "mp4");
        assert_eq!(found[1].extension(), "png");
        for other in [
            json!({"task_id": "t1", "status": "1", "video_url": "https://c/v.mp4"}),
            json!({"task_id": "t1", "status": "2", "video_url": "https://c/v.mp4"}),
            json!(["not", "an", "object"]),
        ] {
            assert!(outputs(&other).is_empty(), "{other}");
        }
    }

    #[test]
    fn a_succeeded_official_task_names_every_output() {
        let body =
            json!({"id": "t1", "status": "SUCCEEDED", "output": ["https://c/a.mp4", 7, "https://c/b"]});
        let found = outputs(&body);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].field, OutputField::Output(2));
        assert_eq!(found[1].extension(), "bin");
        assert!(outputs(&json!({"id": "t1", "status": "RUNNING", "output": ["https://c/a.mp4"]})).is_empty());
    }

    #[test]
    fn archived_webhooks_point_at_the_copies_and_say_so() {
        let mut body = json!({"task_id": "t1", "status": "3", "video_url": "https://c/v.mp4", "poster": "https://c/p.png"});
        let found = outputs(&body);
        let copies: Vec<Linked> = found
            .into_iter()
            .enumerate()
            .map(|(at, output)| Linked {
                output,
                copy: copy(100 + at as u64),
                link: format!("https://files.example/{at}"),
            })
            .collect();
        archived(&mut body, &copies);
        assert_eq!(body["video_url"], "https://files.example/0");
        assert_eq!(body["poster"], "https://files.example/1");
        assert_eq!(body["runway_proxy_archive_status"], "archived");
        let entries = body["runway_proxy_archive"].as_array().unwrap();
        assert_eq!(entries[0]["field"], "video_url");
        assert_eq!(entries[0]["original"], "https://c/v.mp4");
        assert_eq!(entries[1]["bytes"], 101);
        assert_eq!(entries[1]["sha256"], "ab".repeat(32));

        let mut official = json!({"id": "t1", "status": "SUCCEEDED", "output": ["https://c/a.mp4"]});
        let output = outputs(&official).remove(0);
        archived(
            &mut official,
            &[Linked {
                output,
                copy: copy(5),
                link: "https://files.example/a".into(),
            }],
        );
        assert_eq!(official["output"][0], "https://files.example/a");
        assert_eq!(official["runway_proxy_archive"][0]["field"], "output[0]");
    }

    #[test]
    fn a_failed_archive_keeps_the_original_urls() {
        let mut body = json!({"task_id": "t1", "status": "3", "video_url": "https://c/v.mp4"});
        failed(&mut body, "output larger than 2147483648 bytes");
        assert_eq!(body["video_url"], "https://c/v.mp4");
        assert_eq!(body["runway_proxy_archive_status"], "failed");
        assert_eq!(
            body["runway_proxy_archive_reason"],
            "output larger than 2147483648 bytes"
        );
    }
}

//! What `GET /-/tasks/{id}` shows of a task's archive, with fresh links to its copies.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::archive::{ArchiveLinks, ObjectKey};
use crate::store::{ArchiveJobs, BoxFuture, Error, task_key};

/// Reports a task's archive job for the admin API, minting fresh links to its copies
/// each time (an operator's way to get a link again after one expired). Cheap to clone.
#[derive(Clone)]
pub struct ArchiveAdmin {
    jobs: Arc<dyn ArchiveJobs>,
    links: ArchiveLinks,
}

impl std::fmt::Debug for ArchiveAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveAdmin").finish_non_exhaustive()
    }
}

impl ArchiveAdmin {
    /// Jobs from `jobs`, links minted with `links`.
    pub fn new(jobs: Arc<dyn ArchiveJobs>, links: ArchiveLinks) -> ArchiveAdmin {
        ArchiveAdmin { jobs, links }
    }
}

impl super::super::TaskArchive for ArchiveAdmin {
    fn state(
        &self,
        subscriber: String,
        task_id: String,
    ) -> BoxFuture<'_, Result<Option<&'static str>, Error>> {
        Box::pin(async move {
            let job = self.jobs.archive_of(task_key(&subscriber, &task_id)).await?;
            Ok(job.map(|job| job.state.as_str()))
        })
    }

    fn report(&self, subscriber: String, task_id: String) -> BoxFuture<'_, Result<Option<Value>, Error>> {
        Box::pin(async move {
            let Some(job) = self.jobs.archive_of(task_key(&subscriber, &task_id)).await? else {
                return Ok(None);
            };
            let copies: Vec<Value> = job
                .result
                .as_deref()
                .and_then(|result| serde_json::from_str(result).ok())
                .unwrap_or_default();
            let mut outputs = Vec::with_capacity(copies.len());
            for mut copy in copies {
                let key = copy
                    .get("key")
                    .and_then(Value::as_str)
                    .map(ObjectKey::from_stored);
                if let (Some(key), Some(fields)) = (key, copy.as_object_mut()) {
                    // A link minted now: valid for the whole link lifetime from now.
                    match self.links.link(&key).await {
                        Ok(link) => fields.insert("url".into(), Value::from(link)),
                        Err(err) => fields.insert("link_error".into(), Value::from(err.to_string())),
                    };
                }
                outputs.push(copy);
            }
            Ok(Some(json!({
                "state": job.state,
                "holding": job.holding,
                "attempts": job.attempts,
                "deadline_at": job.deadline_at,
                "next_attempt_at": job.next_attempt_at,
                "last_error": job.last_error,
                "outputs": outputs,
            })))
        })
    }
}

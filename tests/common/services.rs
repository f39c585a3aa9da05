//! The servers the shared-state tests and benches need, started (and installed when
//! missing) by `scripts/test-services`. Its own file so that benches can include it too.

use std::sync::OnceLock;

/// What `scripts/test-services` printed, run once per process.
fn started() -> &'static str {
    static OUTPUT: OnceLock<String> = OnceLock::new();
    OUTPUT.get_or_init(|| {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-services");
        let output = std::process::Command::new(script)
            .output()
            .expect("scripts/test-services runs");
        assert!(
            output.status.success(),
            "scripts/test-services failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
}

/// The URL of the test Redis (`RUNWAY_PROXY_TEST_REDIS_URL`).
pub fn redis_url() -> &'static str {
    service_url("RUNWAY_PROXY_TEST_REDIS_URL")
}

fn service_url(name: &str) -> &'static str {
    started()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("scripts/test-services printed no {name}"))
}

/// The URL of the test PostgreSQL's shared database (`RUNWAY_PROXY_TEST_DATABASE_URL`).
pub fn database_url() -> &'static str {
    service_url("RUNWAY_PROXY_TEST_DATABASE_URL")
}

/// A new, empty database on the test PostgreSQL, for one test alone: no test sees
/// another's rows, and a test that runs again starts clean.
pub async fn fresh_database() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = database_url();
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL answers");
    tokio::spawn(connection);
    forget_finished_runs(&client).await;
    let name = format!(
        "runway_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    let (prefix, _) = base.rsplit_once('/').expect("a database URL ends in /name");
    format!("{prefix}/{name}")
}

/// Drop the databases of test processes that have ended (named with their PID), once per
/// process: the test server keeps no more than the runs still going.
async fn forget_finished_runs(client: &tokio_postgres::Client) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let Ok(rows) = client
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'runway_test_%'",
                &[],
            )
            .await
        else {
            return;
        };
        for row in rows {
            let name: String = row.get(0);
            let pid = name.split('_').nth(2).unwrap_or_default();
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        }
    })
    .await;
}

/// The test S3-compatible store (SeaweedFS): its endpoint, bucket and credentials
/// (`RUNWAY_PROXY_TEST_S3_ENDPOINT`, `..._S3_BUCKET`, `..._S3_ACCESS_KEY`, `..._S3_SECRET_KEY`).
pub fn s3() -> S3 {
    S3 {
        endpoint: service_url("RUNWAY_PROXY_TEST_S3_ENDPOINT"),
        bucket: service_url("RUNWAY_PROXY_TEST_S3_BUCKET"),
        access_key: service_url("RUNWAY_PROXY_TEST_S3_ACCESS_KEY"),
        secret_key: service_url("RUNWAY_PROXY_TEST_S3_SECRET_KEY"),
    }
}

/// Where the test S3 store is, and how to sign in.
pub struct S3 {
    pub endpoint: &'static str,
    pub bucket: &'static str,
    pub access_key: &'static str,
    pub secret_key: &'static str,
}

impl S3 {
    /// `object_store` options for it.
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint.to_owned()),
            ("aws_access_key_id", self.access_key.to_owned()),
            ("aws_secret_access_key", self.secret_key.to_owned()),
            ("aws_region", "us-east-1".to_owned()),
            ("aws_allow_http", "true".to_owned()),
            ("aws_virtual_hosted_style_request", "false".to_owned()),
        ]
    }
}

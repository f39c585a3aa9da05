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

//! What the container, CRI, agent and streaming tests share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Runs `shared/acceptance/images/build.sh` once per test binary: it builds
/// the test images and serves them from the local registry at
/// 127.0.0.1:5000 (starting it if needed).
pub fn build_test_images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/acceptance/images/build.sh");
        let script = if script.exists() {
            script
        } else {
            PathBuf::from("/work/shared/acceptance/images/build.sh")
        };
        let output = Command::new("bash")
            .arg(&script)
            .output()
            .expect("running bash");
        assert!(
            output.status.success(),
            "build.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

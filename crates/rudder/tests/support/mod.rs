//! What the container, CRI, agent and streaming tests share.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Runs the real kubectl against `kubeconfig`: whether it succeeded, and
/// what it printed (stdout, then stderr).
#[allow(dead_code)] // not every test binary drives kubectl
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("running kubectl");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// `kubectl apply -f -` of `yaml`, which must succeed.
#[allow(dead_code)] // not every test binary drives kubectl
pub fn kubectl_apply(kubeconfig: &Path, yaml: &str) {
    let mut child = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .expect("kubectl's stdin")
        .write_all(yaml.as_bytes())
        .expect("writing to kubectl");
    assert!(
        child.wait().expect("kubectl").success(),
        "kubectl apply failed"
    );
}

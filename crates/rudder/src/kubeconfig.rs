//! The admin kubeconfig `rudder server` writes once it is ready.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Renders a kubeconfig for `server` (an `http(s)://host:port` URL).
pub fn render(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: rudder
  cluster:
    server: {server}
contexts:
- name: rudder
  context:
    cluster: rudder
    user: admin
    namespace: default
current-context: rudder
users:
- name: admin
  user: {{}}
preferences: {{}}
"
    )
}

/// Writes the file atomically with owner-only permissions, so a reader never
/// sees half a file.
pub fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("yaml.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn kubeconfig_points_at_the_server() {
        let text = super::render("http://127.0.0.1:6443");
        assert!(text.contains("    server: http://127.0.0.1:6443\n"));
        assert!(text.contains("current-context: rudder\n"));
    }
}

//! The admin kubeconfig `rudder server` writes once it is ready.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Renders a kubeconfig for `server` (an `http(s)://host:port` URL) that
/// trusts `ca_pem` and authenticates as `user` with `credentials` (both
/// embedded, base64, as kubectl writes them).
pub fn render(
    server: &str,
    ca_pem: Option<&str>,
    user: &str,
    credentials: Option<&rudder_auth::pki::CertAndKey>,
) -> String {
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let ca = ca_pem
        .map(|pem| format!("\n    certificate-authority-data: {}", b64(pem)))
        .unwrap_or_default();
    let user_body = match credentials {
        Some(c) => format!(
            "\n    client-certificate-data: {}\n    client-key-data: {}",
            b64(&c.cert_pem),
            b64(&c.key_pem)
        ),
        None => " {}".to_string(),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: rudder
  cluster:
    server: {server}{ca}
contexts:
- name: rudder
  context:
    cluster: rudder
    user: {user}
    namespace: default
current-context: rudder
users:
- name: {user}
  user:{user_body}
preferences: {{}}
"
    )
}

/// Writes the file atomically with owner-only permissions, so a reader never
/// sees half a file (kubeconfigs, keys and certificates alike).
pub fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
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
        let text = super::render("http://127.0.0.1:6443", None, "admin", None);
        assert!(text.contains("    server: http://127.0.0.1:6443\n"));
        assert!(text.contains("current-context: rudder\n"));
        let credentials = rudder_auth::pki::CertAndKey {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        let text = super::render(
            "https://h:1",
            Some("CA"),
            "system:admin",
            Some(&credentials),
        );
        assert!(text.contains("certificate-authority-data: Q0E=\n"));
        assert!(text.contains("client-certificate-data: Q0VSVA==\n"));
        assert!(text.contains("- name: system:admin\n  user:\n    client-certificate-data"));
    }
}

//! Node join tokens, in k3s' format:
//! `K10<hex SHA-256 of the CA bundle>::<username>:<secret>`.
//!
//! The hash pins the cluster's server CA: a joining node fetches the CA
//! over an unverified connection, checks it against the hash, and only
//! then trusts it (and sends the secret). A bare secret (no `K10` prefix)
//! is accepted like k3s does, without that pin.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use super::{write_file, PkiError};

const PREFIX: &str = "K10";
/// The user name server join tokens carry.
pub const SERVER_USER: &str = "server";
/// `DATA_DIR/token`: the secret alone.
pub const TOKEN_FILE: &str = "token";
/// `DATA_DIR/node-token`: the full token to give joining nodes.
pub const NODE_TOKEN_FILE: &str = "node-token";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lower-case hex SHA-256 of the server CA bundle, when pinned.
    pub ca_hash: Option<String>,
    pub username: String,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    /// The secret stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("username", &self.username)
            .field("secret", &"[elided]")
            .finish()
    }
}

impl JoinToken {
    /// Reads `K10<hash>::<username>:<secret>`, `K10<hash>::<secret>`
    /// (user `server`) or a bare secret.
    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let text = text.trim();
        let invalid = |reason: &str| PkiError::invalid("join token", reason);
        if text.is_empty() {
            return Err(invalid("it is empty"));
        }
        let Some(rest) = text.strip_prefix(PREFIX) else {
            return Ok(JoinToken {
                ca_hash: None,
                username: SERVER_USER.to_string(),
                secret: text.to_string(),
            });
        };
        let (hash, credentials) = rest
            .split_once("::")
            .ok_or_else(|| invalid("a K10 token has the form K10<CA hash>::<username>:<secret>"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("its CA hash is not a hex SHA-256"));
        }
        let (username, secret) = credentials
            .split_once(':')
            .unwrap_or((SERVER_USER, credentials));
        if username.is_empty() || secret.is_empty() {
            return Err(invalid("its username or secret is empty"));
        }
        Ok(JoinToken {
            ca_hash: Some(hash.to_ascii_lowercase()),
            username: username.to_string(),
            secret: secret.to_string(),
        })
    }

    /// Whether the CA bundle a server presented is the one this token pins.
    /// A token without a pin matches any CA: such a node trusts the first
    /// CA it is shown, as k3s does for bare tokens.
    pub fn matches_ca(&self, ca_pem: &[u8]) -> bool {
        match &self.ca_hash {
            Some(hash) => constant_time_eq(hash.as_bytes(), ca_hash(ca_pem).as_bytes()),
            None => true,
        }
    }

    /// Whether `secret` is this token's secret, in constant time (the
    /// server checks joining nodes' tokens with this).
    pub fn secret_matches(&self, secret: &str) -> bool {
        constant_time_eq(self.secret.as_bytes(), secret.as_bytes())
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca_hash {
            Some(hash) => write!(f, "{PREFIX}{hash}::{}:{}", self.username, self.secret),
            None => f.write_str(&self.secret),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The hex SHA-256 of a CA bundle's bytes, as join tokens pin it.
pub fn ca_hash(ca_pem: &[u8]) -> String {
    hex(digest(&SHA256, ca_pem).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cluster's join token: the secret kept in `DATA_DIR/token` (created
/// once, so the token is the same at every start), pinned to `ca_pem`, and
/// written whole to `DATA_DIR/node-token` (0600) for the administrator to
/// hand to joining nodes.
pub fn load_or_create_join_token(data_dir: &Path, ca_pem: &str) -> Result<JoinToken, PkiError> {
    let path = data_dir.join(TOKEN_FILE);
    let secret = match fs::read_to_string(&path) {
        // The file may hold a bare secret or, written by hand, a full token.
        Ok(text) if !text.trim().is_empty() => JoinToken::parse(&text)?.secret,
        Ok(_) => return write_token(data_dir, ca_pem, new_secret()?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return write_token(data_dir, ca_pem, new_secret()?)
        }
        Err(e) => return Err(PkiError::io(&path)(e)),
    };
    let token = pinned(ca_pem, secret);
    write_file(
        &data_dir.join(NODE_TOKEN_FILE),
        format!("{token}\n").as_bytes(),
        0o600,
    )?;
    Ok(token)
}

/// A new secret (`rudder token rotate`): nodes that joined keep their
/// certificates, new nodes need the new token.
pub fn rotate_join_token(data_dir: &Path, ca_pem: &str) -> Result<JoinToken, PkiError> {
    write_token(data_dir, ca_pem, new_secret()?)
}

fn pinned(ca_pem: &str, secret: String) -> JoinToken {
    JoinToken {
        ca_hash: Some(ca_hash(ca_pem.as_bytes())),
        username: SERVER_USER.to_string(),
        secret,
    }
}

fn write_token(data_dir: &Path, ca_pem: &str, secret: String) -> Result<JoinToken, PkiError> {
    fs::create_dir_all(data_dir).map_err(PkiError::io(data_dir))?;
    write_file(
        &data_dir.join(TOKEN_FILE),
        format!("{secret}\n").as_bytes(),
        0o600,
    )?;
    let token = pinned(ca_pem, secret);
    write_file(
        &data_dir.join(NODE_TOKEN_FILE),
        format!("{token}\n").as_bytes(),
        0o600,
    )?;
    Ok(token)
}

/// 32 random bytes, hex.
fn new_secret() -> Result<String, PkiError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::invalid("random source", "no random bytes"))?;
    Ok(hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn tokens_parse_and_print_in_k3s_format() {
        let hash = ca_hash(CA.as_bytes());
        assert_eq!(hash.len(), 64);
        let text = format!("K10{hash}::server:s3cret");
        let token = JoinToken::parse(&text).unwrap();
        assert_eq!(token.ca_hash.as_deref(), Some(hash.as_str()));
        assert_eq!(
            (token.username.as_str(), token.secret.as_str()),
            ("server", "s3cret")
        );
        assert_eq!(token.to_string(), text);
        assert!(token.matches_ca(CA.as_bytes()));
        assert!(!token.matches_ca(b"another CA"));
        assert!(token.secret_matches("s3cret") && !token.secret_matches("s3cre"));

        let upper = JoinToken::parse(&format!("K10{}::s3cret\n", hash.to_uppercase())).unwrap();
        assert_eq!(upper.username, "server");
        assert!(upper.matches_ca(CA.as_bytes()), "hex case does not matter");

        let bare = JoinToken::parse("just-a-secret").unwrap();
        assert_eq!(bare.ca_hash, None);
        assert_eq!(bare.secret, "just-a-secret");
        assert!(bare.matches_ca(b"anything"), "no pin, nothing to check");
        assert_eq!(bare.to_string(), "just-a-secret");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let hash = ca_hash(CA.as_bytes());
        for text in [
            "",
            "   ",
            "K10abc::server:x",
            &format!("K10{hash}server:x"),
            &format!("K10{hash}::server:"),
            &format!("K10{hash}::"),
            &format!("K10{}::server:x", "z".repeat(64)),
        ] {
            assert!(JoinToken::parse(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn the_token_survives_restarts_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_join_token(dir.path(), CA).unwrap();
        assert_eq!(first.secret.len(), 64);
        let again = load_or_create_join_token(dir.path(), CA).unwrap();
        assert_eq!(first, again);
        let written = fs::read_to_string(dir.path().join(NODE_TOKEN_FILE)).unwrap();
        assert_eq!(JoinToken::parse(&written).unwrap(), first);
        for file in [TOKEN_FILE, NODE_TOKEN_FILE] {
            let mode = fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let rotated = rotate_join_token(dir.path(), CA).unwrap();
        assert_ne!(rotated.secret, first.secret);
        assert_eq!(load_or_create_join_token(dir.path(), CA).unwrap(), rotated);
    }
}

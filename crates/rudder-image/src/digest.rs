use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A content digest, `sha256:<64 lowercase hex digits>`: the only algorithm
/// registries and image archives use in practice, so the only one the store keeps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses and validates `sha256:<hex>`.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidDigest {
            digest: text.to_string(),
            reason: reason.to_string(),
        };
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| invalid("only sha256 digests are supported"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid("expected 64 lowercase hex digits"));
        }
        Ok(Self(text.to_string()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(Sha256::digest(data))))
    }

    /// The 64 hex digits, used as file and directory names in the store.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Fails with [`Error::DigestMismatch`] unless `actual` equals `self`.
    pub(crate) fn verify(&self, actual: &Digest, what: impl fmt::Display) -> Result<()> {
        if self == actual {
            Ok(())
        } else {
            Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: self.0.clone(),
                actual: actual.0.clone(),
            })
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hashes everything that passes through it, reading or writing.
pub(crate) struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    /// The digest of what went through, the byte count, and the inner value.
    pub(crate) fn finish(self) -> (Digest, u64, T) {
        let digest = Digest(format!("sha256:{}", hex::encode(self.hasher.finalize())));
        (digest, self.bytes, self.inner)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.update(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256_hex() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).unwrap().hex(), "a".repeat(64));
        assert!(Digest::parse("sha512:abc").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("sha256:../{}", "a".repeat(61))).is_err());
    }

    #[test]
    fn hashing_writer_matches_one_shot_digest() {
        let mut writer = Hashing::new(Vec::new());
        writer.write_all(b"hello ").unwrap();
        writer.write_all(b"world").unwrap();
        let (digest, bytes, inner) = writer.finish();
        assert_eq!(digest, Digest::of(b"hello world"));
        assert_eq!(bytes, 11);
        assert_eq!(inner, b"hello world");
    }
}

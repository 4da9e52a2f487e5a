//! The user a verified client certificate stands for, as Kubernetes' x509
//! authenticator reads it: the subject's common name is the user name, its
//! organizations are the groups.
//!
//! rustls has already verified the chain against the client CA by the time
//! this runs; only the subject of the leaf is read here, with a small DER
//! walk (Certificate → tbsCertificate → subject Name) rather than a whole
//! X.509 parser.

use rudder_auth::UserInfo;

/// Why a certificate's subject could not be read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubjectError {
    #[error("malformed DER in the certificate: {0}")]
    Malformed(&'static str),
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const INTEGER: u8 = 0x02;
/// `[0] EXPLICIT Version` in tbsCertificate.
const VERSION: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// id-at-organizationName, 2.5.4.10.
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

/// The subject's common name and organizations, in certificate order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub common_name: String,
    pub organizations: Vec<String>,
}

/// The user of a client certificate (DER): `CN` → user name, each `O` → a
/// group, plus `system:authenticated`. None when the common name is empty:
/// Kubernetes' x509 authenticator does not authenticate such a certificate,
/// so the request falls through to the bearer token.
pub fn certificate_user(der: &[u8]) -> Result<Option<UserInfo>, SubjectError> {
    let subject = certificate_subject(der)?;
    if subject.common_name.is_empty() {
        return Ok(None);
    }
    let groups: Vec<&str> = subject.organizations.iter().map(String::as_str).collect();
    Ok(Some(UserInfo::authenticated(subject.common_name, &groups)))
}

/// The certificate's subject. Several CNs: the last wins (as Go's
/// `pkix.Name` fills `CommonName`).
pub fn certificate_subject(der: &[u8]) -> Result<Subject, SubjectError> {
    let (certificate, _) = expect(der, SEQUENCE, "certificate")?;
    let (tbs, _) = expect(certificate, SEQUENCE, "tbsCertificate")?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = tlv(rest)?.2;
    }
    let (_, rest) = expect(rest, INTEGER, "serial number")?;
    let (_, rest) = expect(rest, SEQUENCE, "signature algorithm")?;
    let (_, rest) = expect(rest, SEQUENCE, "issuer")?;
    let (_, rest) = expect(rest, SEQUENCE, "validity")?;
    let (mut names, _) = expect(rest, SEQUENCE, "subject")?;
    let mut subject = Subject::default();
    while !names.is_empty() {
        let (mut set, after) = expect(names, SET, "relative distinguished name")?;
        names = after;
        while !set.is_empty() {
            let (attribute, after) = expect(set, SEQUENCE, "attribute")?;
            set = after;
            let (oid, value) = expect(attribute, OID, "attribute type")?;
            let (tag, content, _) = tlv(value)?;
            if oid == OID_COMMON_NAME {
                subject.common_name = directory_string(tag, content)?;
            } else if oid == OID_ORGANIZATION {
                subject.organizations.push(directory_string(tag, content)?);
            }
        }
    }
    Ok(subject)
}

/// A `DirectoryString` (and IA5String) as text.
fn directory_string(tag: u8, content: &[u8]) -> Result<String, SubjectError> {
    match tag {
        // UTF8String, PrintableString, IA5String.
        0x0c | 0x13 | 0x16 => String::from_utf8(content.to_vec())
            .map_err(|_| SubjectError::Malformed("a name is not valid UTF-8")),
        // TeletexString: Latin-1 in practice.
        0x14 => Ok(content.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1e => {
            let pairs = content.chunks_exact(2);
            if !pairs.remainder().is_empty() {
                return Err(SubjectError::Malformed("odd-length BMPString"));
            }
            let units: Vec<u16> = pairs
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| SubjectError::Malformed("invalid BMPString"))
        }
        _ => Err(SubjectError::Malformed("a name is not a directory string")),
    }
}

/// The next element, which must have `tag`: its content and what follows.
fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), SubjectError> {
    let (found, content, rest) = tlv(input)?;
    if found != tag {
        return Err(SubjectError::Malformed(what));
    }
    Ok((content, rest))
}

/// One DER tag-length-value: tag, content, the rest of `input`.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), SubjectError> {
    let truncated = SubjectError::Malformed("truncated element");
    let (&tag, rest) = input.split_first().ok_or(truncated.clone())?;
    let (&first, rest) = rest.split_first().ok_or(truncated.clone())?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return Err(SubjectError::Malformed("bad length"));
        }
        let length = rest[..octets]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (length, &rest[octets..])
    };
    if rest.len() < length {
        return Err(truncated);
    }
    Ok((tag, &rest[..length], &rest[length..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(names: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_is_the_user_and_organizations_the_groups() {
        let der = certificate(&[
            (rcgen::DnType::OrganizationName, "system:nodes"),
            (rcgen::DnType::CommonName, "system:node:n1"),
            (rcgen::DnType::CountryName, "FR"),
        ]);
        let user = certificate_user(&der).unwrap().unwrap();
        assert_eq!(user.username, "system:node:n1");
        assert_eq!(user.groups, ["system:nodes", "system:authenticated"]);
        assert_eq!(user.node_name(), Some("n1"));
    }

    #[test]
    fn a_certificate_without_common_name_authenticates_no_one() {
        let der = certificate(&[(rcgen::DnType::OrganizationName, "system:masters")]);
        assert_eq!(certificate_user(&der).unwrap(), None);
    }

    #[test]
    fn directory_strings_of_every_usual_kind_decode() {
        assert_eq!(directory_string(0x13, b"abc").unwrap(), "abc");
        assert_eq!(directory_string(0x14, &[0x63, 0xe9]).unwrap(), "cé");
        assert_eq!(
            directory_string(0x1e, &[0x00, 0x61, 0x00, 0xe9]).unwrap(),
            "aé"
        );
        assert!(directory_string(0x04, b"x").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            &b""[..],
            &[0x30],
            &[0x30, 0x85, 0, 0, 0, 0, 1],
            &[0x30, 0x05, 1],
        ] {
            assert!(certificate_subject(input).is_err(), "{input:?}");
        }
    }
}

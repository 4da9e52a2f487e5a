//! Subjects with several organizations.
//!
//! Kubernetes names a client certificate's groups by the subject's
//! organizations, and a user may be in several groups, but rcgen's
//! `DistinguishedName` holds one value per attribute type. For those
//! subjects we let rcgen build the certificate (or request) with a unique
//! placeholder subject, then put the real subject's DER in its place and
//! sign the to-be-signed part again with the same key. Certificates and
//! certification requests share the outer shape this needs:
//! `SEQUENCE { toBeSigned, signatureAlgorithm, BIT STRING signature }`.

use rcgen::{DistinguishedName, DnType, SigningKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::PkiError;

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_BIT_STRING: u8 = 0x03;
/// 2.5.4.3 and 2.5.4.10.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

/// How to give a certificate built with a placeholder subject its real one.
pub(super) struct SubjectRewrite {
    placeholder: Vec<u8>,
    subject: Vec<u8>,
}

/// The subject `CN=common_name` with `O=` each of `organizations` (in
/// Go's order: organizations first), for rcgen; with a rewrite to apply
/// after signing when rcgen cannot say it (several organizations).
pub(super) fn subject_name(
    common_name: &str,
    organizations: &[String],
) -> (DistinguishedName, Option<SubjectRewrite>) {
    let mut dn = DistinguishedName::new();
    if organizations.len() <= 1 {
        for organization in organizations {
            dn.push(DnType::OrganizationName, organization.as_str());
        }
        dn.push(DnType::CommonName, common_name);
        return (dn, None);
    }
    let mut marker = [0u8; 16];
    // Without randomness the marker is still unique enough in practice: it
    // only has to differ from the issuer's name.
    let _ = SystemRandom::new().fill(&mut marker);
    let marker: String = marker.iter().map(|b| format!("{b:02x}")).collect();
    let placeholder = format!("rudder-placeholder-{marker}");
    dn.push(DnType::CommonName, placeholder.as_str());
    let rewrite = SubjectRewrite {
        placeholder: name_der(&[(OID_COMMON_NAME, &placeholder)]),
        subject: name_der(
            &organizations
                .iter()
                .map(|o| (OID_ORGANIZATION, o.as_str()))
                .chain([(OID_COMMON_NAME, common_name)])
                .collect::<Vec<_>>(),
        ),
    };
    (dn, Some(rewrite))
}

impl SubjectRewrite {
    /// `signed` (DER) with the real subject, signed again by `key`.
    pub(super) fn apply(&self, signed: &[u8], key: &impl SigningKey) -> Result<Vec<u8>, PkiError> {
        let malformed = || PkiError::invalid("generated certificate", "unexpected DER layout");
        let (outer, rest) = split_tlv(signed).ok_or_else(malformed)?;
        if outer.tag != TAG_SEQUENCE || !rest.is_empty() {
            return Err(malformed());
        }
        let (tbs, after_tbs) = split_tlv(outer.content).ok_or_else(malformed)?;
        let (algorithm, _signature) = split_tlv(after_tbs).ok_or_else(malformed)?;
        let at = find(tbs.content, &self.placeholder).ok_or_else(malformed)?;
        let mut content = tbs.content[..at].to_vec();
        content.extend_from_slice(&self.subject);
        content.extend_from_slice(&tbs.content[at + self.placeholder.len()..]);
        let new_tbs = tlv(TAG_SEQUENCE, &content);
        let mut bits = vec![0u8]; // no unused bits
        bits.extend(key.sign(&new_tbs)?);
        let mut body = new_tbs;
        body.extend_from_slice(algorithm.whole);
        body.extend(tlv(TAG_BIT_STRING, &bits));
        Ok(tlv(TAG_SEQUENCE, &body))
    }
}

/// `Name ::= SEQUENCE OF SET OF AttributeTypeAndValue`, one attribute per
/// set, values as UTF8String (as rcgen writes them).
fn name_der(attributes: &[(&[u8], &str)]) -> Vec<u8> {
    let mut rdns = Vec::new();
    for (oid, value) in attributes {
        let mut pair = tlv(TAG_OID, oid);
        pair.extend(tlv(TAG_UTF8_STRING, value.as_bytes()));
        rdns.extend(tlv(TAG_SET, &tlv(TAG_SEQUENCE, &pair)));
    }
    tlv(TAG_SEQUENCE, &rdns)
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    whole: &'a [u8],
}

/// The first TLV of `input` (single-byte tags, definite lengths) and what
/// follows it.
fn split_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > std::mem::size_of::<usize>() {
            return None;
        }
        let len = input
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((
        Tlv {
            tag,
            content: &whole[header..],
            whole,
        },
        &input[end..],
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_encoded_short_and_long() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (parsed, rest) = split_tlv(&long).expect("parses");
        assert_eq!(
            (parsed.tag, parsed.content.len(), rest.len()),
            (0x04, 300, 0)
        );
    }

    #[test]
    fn one_organization_needs_no_rewrite() {
        let (dn, rewrite) = subject_name("jane", &["dev".to_string()]);
        assert!(rewrite.is_none());
        assert!(dn.get(&DnType::OrganizationName).is_some());
        let (_, rewrite) = subject_name("jane", &["dev".to_string(), "ops".to_string()]);
        assert!(rewrite.is_some());
    }
}

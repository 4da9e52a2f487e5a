//! ServiceAccount tokens: JWTs signed with ES256 (ECDSA P-256, SHA-256),
//! in the two shapes Kubernetes issues.
//!
//! - Bound tokens (TokenRequest, projected volumes): issuer
//!   [`DEFAULT_ISSUER`] (configurable), audiences, an expiry, and a
//!   `kubernetes.io` claim naming the ServiceAccount and what the token is
//!   bound to (a Pod, a Secret, a Node). The authenticator checks that the
//!   bound objects still exist.
//! - Legacy tokens (kept in `kubernetes.io/service-account-token`
//!   Secrets): issuer `kubernetes/serviceaccount`, no expiry, flat
//!   `kubernetes.io/serviceaccount/...` claims. Valid while their Secret
//!   exists.
//!
//! [`Claims::kind`] tells the two apart; [`Claims::user_info`] gives the
//! user the token authenticates as.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Deserializer, Serialize};

use crate::user::UserInfo;

/// The issuer of bound tokens unless configured otherwise (Kubernetes'
/// conventional `--service-account-issuer`).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer of legacy Secret-based tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// Clock skew tolerated on `exp` and `nbf` (go-jose's default leeway).
pub const LEEWAY: Duration = Duration::from_secs(60);

/// User extra keys a bound token adds (as Kubernetes names them).
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";

const ALGORITHM: &str = "ES256";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("invalid signing key: {0}")]
    Key(String),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unsupported token signing algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token issuer {0:?} is not accepted")]
    WrongIssuer(String),
    #[error("service account token has expired")]
    Expired,
    #[error("service account token is not valid yet")]
    NotYetValid,
    #[error("token audiences {token:?} is invalid for the target audiences {accepted:?}")]
    WrongAudience {
        token: Vec<String>,
        accepted: Vec<String>,
    },
    #[error("token lacks the {0} claim")]
    MissingClaim(&'static str),
    #[error("token subject {subject:?} does not name its service account {service_account:?}")]
    SubjectMismatch {
        subject: String,
        service_account: String,
    },
    #[error("signing the token failed")]
    Signing,
}

/// A name and uid, as the `kubernetes.io` claim refers to objects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

impl ObjectRef {
    pub fn new(name: impl Into<String>, uid: impl Into<String>) -> Self {
        ObjectRef {
            name: name.into(),
            uid: uid.into(),
        }
    }
}

/// The private `kubernetes.io` claim of a bound token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    /// For tokens issued with an extended lifetime: when clients should be
    /// warned that they use a stale token (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
}

/// The flat claims of a legacy Secret-based token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyClaims {
    #[serde(
        rename = "kubernetes.io/serviceaccount/namespace",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace: Option<String>,
    #[serde(
        rename = "kubernetes.io/serviceaccount/secret.name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub secret_name: Option<String>,
    #[serde(
        rename = "kubernetes.io/serviceaccount/service-account.name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account_name: Option<String>,
    #[serde(
        rename = "kubernetes.io/serviceaccount/service-account.uid",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account_uid: Option<String>,
}

/// A ServiceAccount token's claims, as Kubernetes writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Left empty, [`TokenIssuer::issue`] fills in its issuer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iss: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub aud: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(
        rename = "kubernetes.io",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes: Option<KubernetesClaims>,
    #[serde(flatten)]
    pub legacy: LegacyClaims,
}

/// `aud` is a string or an array of strings (RFC 7519).
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// Which kind of token, with what the authenticator must check still
/// exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind<'a> {
    /// Check that the bound Pod or Secret (and Node) still exist, with
    /// these uids, and the ServiceAccount too.
    Bound(&'a KubernetesClaims),
    /// Check that the Secret still exists and holds this token, and the
    /// ServiceAccount too.
    Legacy {
        namespace: &'a str,
        service_account_name: &'a str,
        service_account_uid: &'a str,
        secret_name: &'a str,
    },
}

impl Claims {
    /// A bound token's claims for ServiceAccount `service_account` in
    /// `namespace`, valid from `now` for `expiration`, with a fresh `jti`.
    /// Bind it with `kubernetes.pod` / `.secret` / `.node`.
    pub fn bound(
        namespace: &str,
        service_account: ObjectRef,
        audiences: Vec<String>,
        now: SystemTime,
        expiration: Duration,
    ) -> Self {
        let now = unix(now);
        Claims {
            sub: service_account_username(namespace, &service_account.name),
            aud: audiences,
            iat: Some(now),
            nbf: Some(now),
            exp: Some(now.saturating_add(i64::try_from(expiration.as_secs()).unwrap_or(i64::MAX))),
            jti: Some(random_uuid()),
            kubernetes: Some(KubernetesClaims {
                namespace: namespace.to_string(),
                serviceaccount: service_account,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A legacy token's claims, for the token controller's Secrets.
    pub fn legacy(
        namespace: &str,
        service_account_name: &str,
        service_account_uid: &str,
        secret_name: &str,
    ) -> Self {
        Claims {
            iss: LEGACY_ISSUER.to_string(),
            sub: service_account_username(namespace, service_account_name),
            legacy: LegacyClaims {
                namespace: Some(namespace.to_string()),
                secret_name: Some(secret_name.to_string()),
                service_account_name: Some(service_account_name.to_string()),
                service_account_uid: Some(service_account_uid.to_string()),
            },
            ..Default::default()
        }
    }

    /// The kind of token, when it carries the claims of one.
    pub fn kind(&self) -> Option<TokenKind<'_>> {
        if self.iss == LEGACY_ISSUER {
            let legacy = &self.legacy;
            return Some(TokenKind::Legacy {
                namespace: legacy.namespace.as_deref()?,
                service_account_name: legacy.service_account_name.as_deref()?,
                service_account_uid: legacy.service_account_uid.as_deref()?,
                secret_name: legacy.secret_name.as_deref()?,
            });
        }
        self.kubernetes.as_ref().map(TokenKind::Bound)
    }

    /// The user this token authenticates as: `system:serviceaccount:NS:NAME`
    /// in the ServiceAccount groups, with, for bound tokens, the extra
    /// Kubernetes adds (credential id `JTI=...`, the Pod's and the Node's
    /// name and uid).
    pub fn user_info(&self) -> Option<UserInfo> {
        match self.kind()? {
            TokenKind::Legacy {
                namespace,
                service_account_name,
                service_account_uid,
                ..
            } => Some(UserInfo::service_account(
                namespace,
                service_account_name,
                service_account_uid,
            )),
            TokenKind::Bound(k) => {
                let mut user = UserInfo::service_account(
                    &k.namespace,
                    &k.serviceaccount.name,
                    &k.serviceaccount.uid,
                );
                let mut extra = BTreeMap::new();
                if let Some(jti) = self.jti.as_deref().filter(|j| !j.is_empty()) {
                    extra.insert(EXTRA_CREDENTIAL_ID.to_string(), vec![format!("JTI={jti}")]);
                }
                if let Some(pod) = &k.pod {
                    extra.insert(EXTRA_POD_NAME.to_string(), vec![pod.name.clone()]);
                    extra.insert(EXTRA_POD_UID.to_string(), vec![pod.uid.clone()]);
                }
                if let Some(node) = &k.node {
                    extra.insert(EXTRA_NODE_NAME.to_string(), vec![node.name.clone()]);
                    extra.insert(EXTRA_NODE_UID.to_string(), vec![node.uid.clone()]);
                }
                user.extra = extra;
                Some(user)
            }
        }
    }
}

fn service_account_username(namespace: &str, name: &str) -> String {
    format!("{}{namespace}:{name}", crate::user::SERVICE_ACCOUNT_PREFIX)
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A random (version 4) UUID, for `jti`.
fn random_uuid() -> String {
    let mut b = [0u8; 16];
    // ring's SystemRandom only fails when the OS has no randomness at all.
    let _ = SystemRandom::new().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// Signs ServiceAccount tokens with the cluster's key.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    issuer: String,
    kid: String,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// The issuer for key `pem` (an ECDSA P-256 PKCS#8 key, as
    /// `ClusterPki::service_account_key_pem` keeps it), naming itself
    /// `issuer` in bound tokens.
    pub fn from_pem(pem: &str, issuer: &str) -> Result<Self, TokenError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| TokenError::Key(e.to_string()))?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| TokenError::Key(e.to_string()))?;
        let kid = key_id(key.public_key().as_ref());
        Ok(TokenIssuer {
            key,
            issuer: issuer.to_string(),
            kid,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The signed token (`header.payload.signature`). `claims.iss`, when
    /// empty, becomes this issuer.
    pub fn issue(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = Header {
            alg: ALGORITHM.to_string(),
            kid: Some(self.kid.clone()),
        };
        let mut claims = claims.clone();
        if claims.iss.is_empty() {
            claims.iss = self.issuer.clone();
        }
        let signing_input = format!("{}.{}", base64_json(&header)?, base64_json(&claims)?);
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| TokenError::Signing)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// A verifier for this issuer's tokens, accepting the audience
    /// Kubernetes accepts by default: the issuer itself.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier {
            public_key: self.key.public_key().as_ref().to_vec(),
            issuer: self.issuer.clone(),
            audiences: vec![self.issuer.clone()],
            kid: self.kid.clone(),
        }
    }
}

fn base64_json(value: &impl Serialize) -> Result<String, TokenError> {
    let json = serde_json::to_vec(value).map_err(|e| TokenError::Malformed(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

/// Kubernetes' key id: the unpadded base64url SHA-256 of the public key's
/// PKIX (SubjectPublicKeyInfo) DER.
fn key_id(uncompressed_point: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, &spki_der(uncompressed_point)))
}

/// SubjectPublicKeyInfo for a P-256 point: the fixed algorithm identifier
/// (id-ecPublicKey, prime256v1) and the point as a BIT STRING.
fn spki_der(uncompressed_point: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    [&PREFIX[..], uncompressed_point].concat()
}

/// Checks tokens signed by one key.
#[derive(Clone, Debug)]
pub struct TokenVerifier {
    /// The uncompressed P-256 point.
    public_key: Vec<u8>,
    issuer: String,
    audiences: Vec<String>,
    kid: String,
}

impl TokenVerifier {
    /// Accept bound tokens for any of `audiences` (the API server's
    /// `--api-audiences`) instead of the issuer alone.
    pub fn with_audiences(mut self, audiences: Vec<String>) -> Self {
        self.audiences = audiences;
        self
    }

    /// The public key as a JSON Web Key Set, for
    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> serde_json::Value {
        let (x, y) = self.public_key[1..].split_at(32);
        serde_json::json!({
            "keys": [{
                "use": "sig",
                "kty": "EC",
                "kid": self.kid,
                "crv": "P-256",
                "alg": ALGORITHM,
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
            }]
        })
    }

    /// The token's claims when its signature is ours (ES256), its issuer is
    /// ours (or the legacy one, with legacy claims), it is within its
    /// validity at `now` (give or take [`LEEWAY`]), a bound token names an
    /// accepted audience, and its subject is its ServiceAccount. Whether
    /// the objects it names still exist is for the caller to check (see
    /// [`Claims::kind`]).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let malformed = |why: &str| TokenError::Malformed(why.to_string());
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("a JWT has three dot-separated parts"));
        };
        let alg = decode_json::<Header>(header)?.alg;
        if alg != ALGORITHM {
            return Err(TokenError::UnsupportedAlgorithm(alg));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| malformed("the signature is not base64url"))?;
        // Everything before the last dot: `header.payload`.
        let signing_input = &token[..header.len() + 1 + payload.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_key)
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = decode_json(payload)?;

        let now = unix(now);
        let leeway = LEEWAY.as_secs() as i64;
        if claims
            .exp
            .is_some_and(|exp| now > exp.saturating_add(leeway))
        {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| now < nbf.saturating_sub(leeway))
        {
            return Err(TokenError::NotYetValid);
        }
        let (namespace, service_account) = if claims.iss == LEGACY_ISSUER {
            let legacy = &claims.legacy;
            let (Some(namespace), Some(name), Some(_), Some(_)) = (
                &legacy.namespace,
                &legacy.service_account_name,
                &legacy.service_account_uid,
                &legacy.secret_name,
            ) else {
                return Err(TokenError::MissingClaim("kubernetes.io/serviceaccount/*"));
            };
            (namespace.clone(), name.clone())
        } else if claims.iss == self.issuer {
            let Some(kubernetes) = &claims.kubernetes else {
                return Err(TokenError::MissingClaim("kubernetes.io"));
            };
            if claims.exp.is_none() {
                return Err(TokenError::MissingClaim("exp"));
            }
            if !claims.aud.iter().any(|a| self.audiences.contains(a)) {
                return Err(TokenError::WrongAudience {
                    token: claims.aud.clone(),
                    accepted: self.audiences.clone(),
                });
            }
            (
                kubernetes.namespace.clone(),
                kubernetes.serviceaccount.name.clone(),
            )
        } else {
            return Err(TokenError::WrongIssuer(claims.iss));
        };
        let expected = service_account_username(&namespace, &service_account);
        if claims.sub != expected {
            return Err(TokenError::SubjectMismatch {
                subject: claims.sub,
                service_account: expected,
            });
        }
        Ok(claims)
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed("a part is not base64url".into()))?;
    serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed(e.to_string()))
}

/// Whether a bearer token is shaped like a JWT (three base64url parts, the
/// first a JSON header naming an algorithm), so that the authenticator
/// tries it as a ServiceAccount token rather than as another kind.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return false;
    }
    let base64url = |p: &&str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    parts.iter().all(base64url) && decode_json::<Header>(parts[0]).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = DEFAULT_ISSUER;

    fn key_pem() -> String {
        rcgen::KeyPair::generate().unwrap().serialize_pem()
    }

    fn issuer() -> TokenIssuer {
        TokenIssuer::from_pem(&key_pem(), ISSUER).unwrap()
    }

    fn pod_token_claims(now: SystemTime) -> Claims {
        let mut claims = Claims::bound(
            "sec",
            ObjectRef::new("reader", "sa-uid"),
            vec![ISSUER.to_string()],
            now,
            Duration::from_secs(3600),
        );
        let k = claims.kubernetes.as_mut().unwrap();
        k.pod = Some(ObjectRef::new("web-0", "pod-uid"));
        k.node = Some(ObjectRef::new("n1", "node-uid"));
        claims
    }

    #[test]
    fn bound_tokens_round_trip() {
        let issuer = issuer();
        let now = SystemTime::now();
        let claims = pod_token_claims(now);
        let token = issuer.issue(&claims).unwrap();
        assert!(looks_like_jwt(&token));
        let verified = issuer.verifier().verify(&token, now).unwrap();
        assert_eq!(verified.iss, ISSUER);
        assert_eq!(verified.sub, "system:serviceaccount:sec:reader");
        assert_eq!(
            Claims {
                iss: ISSUER.into(),
                ..claims
            },
            verified
        );
        let Some(TokenKind::Bound(k)) = verified.kind() else {
            panic!("a bound token: {verified:?}");
        };
        assert_eq!(k.pod.as_ref().unwrap().uid, "pod-uid");

        let user = verified.user_info().unwrap();
        assert_eq!(user.username, "system:serviceaccount:sec:reader");
        assert_eq!(user.uid, "sa-uid");
        assert!(user.in_group("system:serviceaccounts:sec"));
        let jti = verified.jti.as_deref().unwrap();
        assert_eq!(jti.len(), 36);
        assert_eq!(user.extra[EXTRA_CREDENTIAL_ID], [format!("JTI={jti}")]);
        assert_eq!(user.extra[EXTRA_POD_NAME], ["web-0"]);
        assert_eq!(user.extra[EXTRA_NODE_UID], ["node-uid"]);

        // The header and payload are what Kubernetes writes.
        let mut parts = token.split('.');
        let header: serde_json::Value = decode_json(parts.next().unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], issuer.kid);
        let payload: serde_json::Value = decode_json(parts.next().unwrap()).unwrap();
        assert_eq!(payload["aud"], serde_json::json!([ISSUER]));
        assert_eq!(payload["kubernetes.io"]["serviceaccount"]["name"], "reader");
        assert_eq!(payload["kubernetes.io"]["pod"]["name"], "web-0");
        assert!(payload
            .get("kubernetes.io/serviceaccount/namespace")
            .is_none());
    }

    #[test]
    fn legacy_tokens_verify_without_expiry() {
        let issuer = issuer();
        let claims = Claims::legacy("sec", "reader", "sa-uid", "reader-token-abcde");
        let token = issuer.issue(&claims).unwrap();
        let payload: serde_json::Value = decode_json(token.split('.').nth(1).unwrap()).unwrap();
        assert_eq!(payload["iss"], LEGACY_ISSUER);
        assert_eq!(
            payload["kubernetes.io/serviceaccount/secret.name"],
            "reader-token-abcde"
        );
        assert!(payload.get("exp").is_none());

        let ten_years = SystemTime::now() + Duration::from_secs(10 * 365 * 24 * 3600);
        let verified = issuer.verifier().verify(&token, ten_years).unwrap();
        assert_eq!(
            verified.kind(),
            Some(TokenKind::Legacy {
                namespace: "sec",
                service_account_name: "reader",
                service_account_uid: "sa-uid",
                secret_name: "reader-token-abcde",
            })
        );
        let user = verified.user_info().unwrap();
        assert_eq!(user, UserInfo::service_account("sec", "reader", "sa-uid"));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let issuer = issuer();
        let verifier = issuer.verifier();
        let now = SystemTime::now();
        let token = issuer.issue(&pod_token_claims(now)).unwrap();

        // Tampered payload, same signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut claims = pod_token_claims(now);
        claims.iss = ISSUER.into();
        claims.kubernetes.as_mut().unwrap().namespace = "kube-system".into();
        claims.sub = "system:serviceaccount:kube-system:reader".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        assert_eq!(
            verifier.verify(&parts.join("."), now),
            Err(TokenError::BadSignature)
        );

        // Tampered signature.
        let mut sig = URL_SAFE_NO_PAD
            .decode(token.rsplit('.').next().unwrap())
            .unwrap();
        sig[10] ^= 1;
        let forged = format!(
            "{}.{}",
            token.rsplit_once('.').unwrap().0,
            URL_SAFE_NO_PAD.encode(&sig)
        );
        assert_eq!(verifier.verify(&forged, now), Err(TokenError::BadSignature));

        // Another key.
        let other = TokenIssuer::from_pem(&key_pem(), ISSUER).unwrap();
        assert_eq!(
            other.verifier().verify(&token, now),
            Err(TokenError::BadSignature)
        );

        // Expired (beyond the leeway), and not yet valid.
        let later = now + Duration::from_secs(3600) + LEEWAY + Duration::from_secs(1);
        assert_eq!(verifier.verify(&token, later), Err(TokenError::Expired));
        assert!(verifier
            .verify(&token, now + Duration::from_secs(3600) + LEEWAY / 2)
            .is_ok());
        let earlier = now - LEEWAY - Duration::from_secs(5);
        assert_eq!(
            verifier.verify(&token, earlier),
            Err(TokenError::NotYetValid)
        );

        // Another issuer.
        let elsewhere = TokenIssuer::from_pem(&key_pem(), "https://elsewhere").unwrap();
        let foreign = elsewhere.issue(&pod_token_claims(now)).unwrap();
        let same_key_other_issuer = TokenVerifier {
            issuer: ISSUER.into(),
            ..elsewhere.verifier()
        };
        assert_eq!(
            same_key_other_issuer.verify(&foreign, now),
            Err(TokenError::WrongIssuer("https://elsewhere".into()))
        );

        // An audience the API server does not accept.
        let mut claims = pod_token_claims(now);
        claims.aud = vec!["vault".into()];
        let vault = issuer.issue(&claims).unwrap();
        assert!(matches!(
            verifier.verify(&vault, now),
            Err(TokenError::WrongAudience { .. })
        ));
        assert!(verifier
            .clone()
            .with_audiences(vec!["vault".into()])
            .verify(&vault, now)
            .is_ok());

        // A subject that is not the ServiceAccount.
        let mut claims = pod_token_claims(now);
        claims.sub = "system:admin".into();
        let liar = issuer.issue(&claims).unwrap();
        assert!(matches!(
            verifier.verify(&liar, now),
            Err(TokenError::SubjectMismatch { .. })
        ));

        // A legacy issuer without the legacy claims.
        let mut claims = pod_token_claims(now);
        claims.iss = LEGACY_ISSUER.into();
        let half = issuer.issue(&claims).unwrap();
        assert!(matches!(
            verifier.verify(&half, now),
            Err(TokenError::MissingClaim(_))
        ));

        // Another algorithm in the header.
        let mut parts: Vec<&str> = token.split('.').collect();
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        parts[0] = &none;
        assert_eq!(
            verifier.verify(&parts.join("."), now),
            Err(TokenError::UnsupportedAlgorithm("none".into()))
        );
        assert!(matches!(
            verifier.verify("a.b", now),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn jwt_shapes_are_recognised() {
        let token = issuer()
            .issue(&pod_token_claims(SystemTime::now()))
            .unwrap();
        assert!(looks_like_jwt(&token));
        for not_jwt in [
            "",
            "abc",
            "K10abc::server:secret",
            "a.b.c",
            "a..c",
            &format!("{token}.d"),
            "0123456789abcdef0123456789abcdef",
        ] {
            assert!(!looks_like_jwt(not_jwt), "{not_jwt:?}");
        }
    }

    #[test]
    fn the_key_id_and_jwks_describe_the_public_key() {
        let issuer = issuer();
        let jwks = issuer.verifier().jwks();
        let key = &jwks["keys"][0];
        assert_eq!(
            (key["kty"].as_str(), key["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        assert_eq!(key["kid"], issuer.kid);
        // The kid hashes the same SubjectPublicKeyInfo rcgen writes.
        let pem = key_pem();
        let rcgen_key = rcgen::KeyPair::from_pem(&pem).unwrap();
        let ring_issuer = TokenIssuer::from_pem(&pem, ISSUER).unwrap();
        use rcgen::PublicKeyData;
        let spki = rcgen_key.subject_public_key_info();
        assert_eq!(
            ring_issuer.kid,
            URL_SAFE_NO_PAD.encode(digest(&SHA256, &spki))
        );
        assert!(matches!(
            TokenIssuer::from_pem("not a key", ISSUER),
            Err(TokenError::Key(_))
        ));
    }
}

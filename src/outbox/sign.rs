//! Standard Webhooks signing of outgoing deliveries.
//!
//! Owns: parsing the `webhooks.secret` into a [`SigningKey`], computing the
//! `webhook-signature` header value (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`)
//! and verifying one (for tests and the demo receiver).
//!
//! Must not: do any I/O, read the clock (the timestamp is an input), or let the secret
//! escape — neither `Debug` nor any error message ever contains the secret or a byte of it.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Standard base64 that accepts input with or without `=` padding (secrets get pasted
/// both ways); signatures we produce are always padded.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const PREFIX: &str = "whsec_";

/// Why a webhook secret was rejected. Never contains the secret itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignError {
    /// The secret is the empty string.
    Empty,
    /// `whsec_` with nothing (or only padding) after it.
    EmptyAfterPrefix,
    /// The part after `whsec_` is not base64; the detail names the position, not the character.
    BadBase64(String),
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignError::Empty => f.write_str("webhook secret is empty"),
            SignError::EmptyAfterPrefix => {
                f.write_str("webhook secret has nothing after the `whsec_` prefix")
            }
            SignError::BadBase64(detail) => write!(
                f,
                "webhook secret after `whsec_` is not valid base64: {detail}"
            ),
        }
    }
}

impl std::error::Error for SignError {}

/// A webhook signing secret. Accepts `whsec_<base64>` (decoded) or any other string
/// (its raw UTF-8 bytes). Debug prints `SigningKey(**redacted**)`.
#[derive(Clone)]
pub struct SigningKey {
    mac: HmacSha256,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(**redacted**)")
    }
}

impl SigningKey {
    /// Parses a secret: `whsec_<base64>` is decoded, anything else is used as raw bytes.
    pub fn parse(secret: &str) -> Result<SigningKey, SignError> {
        if secret.is_empty() {
            return Err(SignError::Empty);
        }
        let bytes = match secret.strip_prefix(PREFIX) {
            Some(encoded) => {
                let decoded = LENIENT_B64
                    .decode(encoded)
                    .map_err(|e| SignError::BadBase64(describe_b64_error(&e)))?;
                if decoded.is_empty() {
                    return Err(SignError::EmptyAfterPrefix);
                }
                decoded
            }
            None => secret.as_bytes().to_vec(),
        };
        // HMAC accepts keys of any length; the error arm is unreachable in practice.
        let mac = HmacSha256::new_from_slice(&bytes)
            .map_err(|_| SignError::BadBase64("key length rejected by HMAC".to_owned()))?;
        Ok(SigningKey { mac })
    }

    /// `v1,<base64 of HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>`
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.tag(msg_id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    fn tag(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// Describes a base64 error without the offending character (it is part of the secret).
fn describe_b64_error(e: &base64::DecodeError) -> String {
    match e {
        base64::DecodeError::InvalidByte(offset, _) => {
            format!("invalid character at position {}", offset + 1)
        }
        base64::DecodeError::InvalidLength(len) => {
            format!("invalid length ({len} base64 characters)")
        }
        base64::DecodeError::InvalidLastSymbol(offset, _) => {
            format!("invalid last character at position {}", offset + 1)
        }
        base64::DecodeError::InvalidPadding => "invalid padding".to_owned(),
    }
}

/// Verifies a `webhook-signature` header value (space-separated list of `v1,<sig>`),
/// constant-time compare. Used by tests and the demo receiver.
///
/// True when any `v1` entry matches; entries of other versions and malformed entries are
/// ignored. Checks the signature only: a receiver's timestamp tolerance is its own policy.
///
/// A receiver written in Rust can verify what it gets with it (`webhook-id`,
/// `webhook-timestamp` and `webhook-signature` are the request's headers):
///
/// ```
/// use cartat_rules::outbox::sign::{SigningKey, verify};
///
/// let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// let body = br#"{"type":"rule.matched","rule":"bot-keyword"}"#;
/// let header = key.sign("b1f4c2", 1_764_300_000, body);
/// assert!(verify(&key, "b1f4c2", 1_764_300_000, body, &header));
/// assert!(!verify(&key, "b1f4c2", 1_764_300_000, b"{}", &header));
/// ```
pub fn verify(key: &SigningKey, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let expected = key.tag(msg_id, timestamp, body);
    header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| LENIENT_B64.decode(sig).ok())
        // `verify_slice` compares in constant time (and rejects a wrong length).
        .any(|sig| expected.clone().verify_slice(&sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks published test vector (standard-webhooks spec and libraries).
    const VEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VEC_TS: i64 = 1614265330;
    const VEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key(secret: &str) -> SigningKey {
        match SigningKey::parse(secret) {
            Ok(k) => k,
            Err(e) => panic!("parse({secret:?}) failed: {e}"),
        }
    }

    #[test]
    fn standard_webhooks_vector() {
        let k = key(VEC_SECRET);
        assert_eq!(k.sign(VEC_ID, VEC_TS, VEC_BODY), VEC_SIG);
        assert!(verify(&k, VEC_ID, VEC_TS, VEC_BODY, VEC_SIG));
    }

    #[test]
    fn unpadded_whsec_is_accepted() {
        // 32 chars need no padding; a 31-byte key encoded without '=' must decode too.
        let padded = format!("whsec_{}", STANDARD.encode([7u8; 31]));
        let unpadded = padded.trim_end_matches('=').to_owned();
        assert_ne!(padded, unpadded);
        assert_eq!(
            key(&padded).sign("m", 1, b"x"),
            key(&unpadded).sign("m", 1, b"x")
        );
    }

    #[test]
    fn raw_secret_uses_its_utf8_bytes() {
        let raw = key("my-plain-secret");
        let same = key(&format!("whsec_{}", STANDARD.encode("my-plain-secret")));
        let sig = raw.sign(VEC_ID, VEC_TS, VEC_BODY);
        assert_eq!(sig, same.sign(VEC_ID, VEC_TS, VEC_BODY));
        assert!(sig.starts_with("v1,"));
        // A raw secret that is not the vector's decoded key signs differently.
        assert_ne!(sig, VEC_SIG);
        // The whsec_ string used raw (not decoded) would be another key.
        assert_ne!(
            key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").sign(VEC_ID, VEC_TS, VEC_BODY),
            VEC_SIG
        );
    }

    #[test]
    fn parse_errors_name_the_problem_never_the_secret() {
        let cases: &[(&str, SignError)] = &[
            ("", SignError::Empty),
            ("whsec_", SignError::EmptyAfterPrefix),
            (
                "whsec_=",
                SignError::BadBase64("invalid character at position 1".into()),
            ),
            (
                "whsec_abc$defg",
                SignError::BadBase64("invalid character at position 4".into()),
            ),
            (
                "whsec_a",
                SignError::BadBase64("invalid length (1 base64 characters)".into()),
            ),
            (
                "whsec_ab c",
                SignError::BadBase64("invalid character at position 3".into()),
            ),
        ];
        for (secret, want) in cases {
            match SigningKey::parse(secret) {
                Ok(_) => panic!("{secret:?} parsed"),
                Err(e) => {
                    assert_eq!(&e, want, "{secret:?}");
                    let msg = e.to_string();
                    let tail = secret.strip_prefix(PREFIX).unwrap_or(secret);
                    if tail.len() > 1 {
                        assert!(!msg.contains(tail), "{msg:?} leaks {tail:?}");
                    }
                    assert!(!msg.contains('$'), "{msg:?} leaks a character");
                }
            }
        }
    }

    #[test]
    fn debug_is_redacted() {
        let k = key(VEC_SECRET);
        assert_eq!(format!("{k:?}"), "SigningKey(**redacted**)");
        assert_eq!(format!("{k:#?}"), "SigningKey(**redacted**)");
    }

    #[test]
    fn verify_table() {
        let k = key(VEC_SECRET);
        let other = key("whsec_c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1zYW1l");
        let other_sig = other.sign(VEC_ID, VEC_TS, VEC_BODY);
        // (name, msg_id, timestamp, body, header, verifies?)
        type Case<'a> = (&'a str, &'a str, i64, &'a [u8], String, bool);
        let cases: &[Case] = &[
            ("valid", VEC_ID, VEC_TS, VEC_BODY, VEC_SIG.into(), true),
            (
                "tampered body",
                VEC_ID,
                VEC_TS,
                br#"{"test": 2432232315}"#,
                VEC_SIG.into(),
                false,
            ),
            (
                "other id",
                "msg_other",
                VEC_TS,
                VEC_BODY,
                VEC_SIG.into(),
                false,
            ),
            (
                "other timestamp",
                VEC_ID,
                VEC_TS + 1,
                VEC_BODY,
                VEC_SIG.into(),
                false,
            ),
            (
                "other key",
                VEC_ID,
                VEC_TS,
                VEC_BODY,
                other_sig.clone(),
                false,
            ),
            (
                "second of two",
                VEC_ID,
                VEC_TS,
                VEC_BODY,
                format!("{other_sig} {VEC_SIG}"),
                true,
            ),
            (
                "first of two",
                VEC_ID,
                VEC_TS,
                VEC_BODY,
                format!("{VEC_SIG} {other_sig}"),
                true,
            ),
            (
                "extra spaces",
                VEC_ID,
                VEC_TS,
                VEC_BODY,
                format!("  {other_sig}   {VEC_SIG}  "),
                true,
            ),
            (
                "unknown version ignored",
                VEC_ID,
                VEC_TS,
                VEC_BODY,
                format!("v1a,abcd {VEC_SIG}"),
                true,
            ),
            (
                "wrong version",
                VEC_ID,
                VEC_TS,
                VEC_BODY,
                VEC_SIG.replacen("v1,", "v2,", 1),
                false,
            ),
            (
                "garbage entries",
                VEC_ID,
                VEC_TS,
                VEC_BODY,
                "v1 , v1,!!! nocomma".into(),
                false,
            ),
            (
                "empty header",
                VEC_ID,
                VEC_TS,
                VEC_BODY,
                String::new(),
                false,
            ),
            (
                "truncated signature",
                VEC_ID,
                VEC_TS,
                VEC_BODY,
                VEC_SIG[..20].into(),
                false,
            ),
            (
                "unpadded signature",
                VEC_ID,
                VEC_TS,
                VEC_BODY,
                VEC_SIG.trim_end_matches('=').into(),
                true,
            ),
        ];
        for (name, id, ts, body, header, want) in cases {
            assert_eq!(verify(&k, id, *ts, body, header), *want, "{name}");
        }
    }

    #[test]
    fn negative_and_large_timestamps_sign() {
        let k = key("raw");
        for ts in [i64::MIN, -1, 0, i64::MAX] {
            let sig = k.sign("id", ts, b"{}");
            assert!(verify(&k, "id", ts, b"{}", &sig), "{ts}");
        }
    }
}

//! JWTs, strictly: one pinned algorithm, a required issuer and audience, required claims, no
//! leeway beyond a few seconds of clock skew, `nbf` checked, and a key id that must be ours.
//! The crate's defaults (60 s leeway, `nbf` unchecked, only `exp` required) are not used.

use anyhow::Context as _;
use automation_shared::config::{JwtAlgorithm, JwtConfig};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Role;

/// Clock skew tolerated between this API and whoever issued a token.
const LEEWAY_SECS: u64 = 5;

/// The longest `jti` and `sub` a token may carry: `revoked_tokens.jti` is `varchar(64)` in ASCII,
/// and user and actor ids are `varchar(64)` wherever they are stored.
pub const MAX_CLAIM_CHARS: usize = 64;

/// The latest `expires_at` MySQL's `datetime` holds (9999-12-31 23:59:59 UTC).
pub const MAX_DATETIME_SECS: i64 = 253_402_300_799;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    pub iss: String,
    pub aud: String,
}

impl Claims {
    /// What a correctly signed token may still not carry, as the problem names it: a `jti` or a
    /// `sub` that could not be stored (so could not be revoked, or would fail where the actor is
    /// recorded). A `jti` of spaces or control characters is refused too: MySQL's padding
    /// comparison would make `"a"` and `"a "` the same token.
    pub fn malformed(&self) -> Option<&'static str> {
        let jti = &self.jti;
        if jti.is_empty() || jti.len() > MAX_CLAIM_CHARS || !jti.bytes().all(|b| b.is_ascii_graphic()) {
            return Some("the token's jti claim must be 1 to 64 visible ASCII characters; this token cannot be used");
        }
        let sub = &self.sub;
        if sub.is_empty()
            || sub.chars().count() > MAX_CLAIM_CHARS
            || sub.chars().any(char::is_control)
            || sub.trim() != sub
        {
            return Some(
                "the token's sub claim must be 1 to 64 characters, without control characters or surrounding spaces; \
                 this token cannot be used",
            );
        }
        None
    }
}

pub struct JwtKeys {
    algorithm: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    key_id: String,
    issuer: String,
    audience: String,
    ttl_secs: i64,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn fingerprint(material: &[u8]) -> String {
    let digest = Sha256::digest(material);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl JwtKeys {
    pub fn from_config(config: &JwtConfig) -> anyhow::Result<JwtKeys> {
        let (algorithm, encoding, decoding, key_id) = match config.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = config.effective_secret().as_bytes();
                (
                    Algorithm::HS256,
                    Some(EncodingKey::from_secret(secret)),
                    DecodingKey::from_secret(secret),
                    format!("hs256-{}", fingerprint(secret)),
                )
            }
            JwtAlgorithm::RS256 => {
                let public = config.public_key.as_deref().context("JWT_PUBLIC_KEY is required for RS256")?;
                let decoding = DecodingKey::from_rsa_pem(public.as_bytes())
                    .context("JWT_PUBLIC_KEY is not an RSA public key in PEM")?;
                let encoding = match config.private_key.as_deref() {
                    Some(private) => Some({
                        tracing::warn!(
                            "JWT_PRIVATE_KEY is set: /auth/login signs RS256 tokens with the rsa crate, whose \
                             private-key operations are not constant-time (RUSTSEC-2023-0071); let the token \
                             issuer hold the private key and give this API only JWT_PUBLIC_KEY"
                        );
                        EncodingKey::from_rsa_pem(private.as_bytes())
                            .context("JWT_PRIVATE_KEY is not an RSA private key in PEM")?
                    }),
                    None => None,
                };
                (Algorithm::RS256, encoding, decoding, format!("rs256-{}", fingerprint(public.trim().as_bytes())))
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud", "jti"]);
        Ok(JwtKeys {
            algorithm,
            encoding,
            decoding,
            validation,
            key_id,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl_secs: config.expiration_secs as i64,
        })
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// Issues a token for a user. `None` when this API only verifies (RS256 without a private key).
    pub fn issue(&self, user_id: &str, role: Role) -> Option<Result<(String, Claims), jsonwebtoken::errors::Error>> {
        let encoding = self.encoding.as_ref()?;
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            exp: now + self.ttl_secs,
            iat: now,
            nbf: Some(now),
            jti: uuid::Uuid::new_v4().to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.key_id.clone());
        Some(encode(&header, &claims, encoding).map(|token| (token, claims)))
    }

    /// Verifies a token; the error says why (for the debug log, never for the client).
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let header = decode_header(token).map_err(|e| format!("unreadable header: {e}"))?;
        if header.alg != self.algorithm {
            return Err(format!("algorithm {:?} is not the pinned {:?}", header.alg, self.algorithm));
        }
        if let Some(kid) = &header.kid
            && *kid != self.key_id
        {
            return Err(format!("unknown key id {kid:?}"));
        }
        if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() {
            return Err("tokens may not point at their own keys (jku, x5u, jwk)".into());
        }
        decode::<Claims>(token, &self.decoding, &self.validation).map(|data| data.claims).map_err(|e| e.to_string())
    }
}

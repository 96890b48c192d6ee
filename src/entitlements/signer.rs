//! The sidecar's ES256 key set for the entitlement token (docs/contract.md §5): one current P-256 key that
//! signs, and retired keys that stay published in the JWKS until tokens signed with them have
//! expired.
//!
//! Keys are PEM files (PKCS#8 `PRIVATE KEY`, or SEC1 `EC PRIVATE KEY` as `openssl ecparam
//! -genkey` writes it). Without a file an ephemeral key is generated; every replica then has
//! its own key, so the caller warns that replicas will disagree. The `kid` is the key's
//! RFC 7638 thumbprint, so the same key gets the same `kid` on every replica and restart.
//!
//! Reading the key files is the only IO here.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use aws_lc_rs::digest;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde::Serialize;
use serde_json::json;

/// Why a key could not be loaded. Messages never include key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The bytes are not PEM, or hold no private key section.
    NoPrivateKey,
    /// A private key of another kind (e.g. RSA `RSA PRIVATE KEY`).
    NotEcKey,
    /// More than one private key: which one signs would be a guess.
    SeveralKeys,
    /// The key is not a valid P-256 key (another curve, or corrupt).
    Rejected(String),
    /// The crypto library failed while generating or encoding a key.
    Crypto,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPrivateKey => {
                f.write_str("no private key found: expected a PEM `PRIVATE KEY` (PKCS#8) or `EC PRIVATE KEY`")
            }
            Self::NotEcKey => f.write_str("not an EC private key: ES256 needs a P-256 key"),
            Self::SeveralKeys => f.write_str("more than one private key in the file"),
            Self::Rejected(why) => write!(f, "not a usable P-256 private key ({why})"),
            Self::Crypto => f.write_str("the crypto library failed to handle the key"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Signing failed: the claims did not serialize, or the crypto library failed.
#[derive(Debug)]
pub struct SignError(jsonwebtoken::errors::Error);

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot sign the entitlement token: {}", self.0)
    }
}

impl std::error::Error for SignError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The public half of a key as published: base64url coordinates and thumbprint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PublicJwk {
    kid: String,
    x: String,
    y: String,
}

impl PublicJwk {
    fn of(key_pair: &EcdsaKeyPair) -> Result<Self, KeyError> {
        // An uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = key_pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 0x04 {
            return Err(KeyError::Crypto);
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..]);
        // RFC 7638 §3.2: the required members only, in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()));
        Ok(Self { kid, x, y })
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "use": "sig",
            "alg": "ES256",
            "kid": self.kid,
        })
    }
}

/// Signs entitlement tokens and publishes the JWKS. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    header: Header,
    kid: String,
    jwks: serde_json::Value,
    /// Serialised once: the JWKS endpoints serve these bytes on every request.
    jwks_bytes: Bytes,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads the current key (or generates an ephemeral one when `current` is `None`) and the
    /// retired keys. The flag is `true` when the current key is ephemeral.
    pub fn from_files(current: Option<&Path>, previous: &[PathBuf]) -> anyhow::Result<(Signer, bool)> {
        let current_key = match current {
            Some(path) => read_key_file(path).context("entitlements.signing_key_file")?,
            None => generate_key().context("generating an ephemeral entitlement signing key")?,
        };
        let previous_keys = previous
            .iter()
            .map(|path| read_key_file(path).context("entitlements.previous_key_files"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let signer = Signer::new(&current_key, &previous_keys)?;
        Ok((signer, current.is_none()))
    }

    /// A signer with a freshly generated key and no retired keys.
    pub fn ephemeral() -> Result<Signer, KeyError> {
        Signer::new(&generate_key()?, &[])
    }

    /// A signer from PEM text: the current key and the retired ones.
    pub fn from_pem(current: &[u8], previous: &[&[u8]]) -> Result<Signer, KeyError> {
        let current = parse_private_key_pem(current)?;
        let previous =
            previous.iter().map(|pem| parse_private_key_pem(pem)).collect::<Result<Vec<_>, _>>()?;
        Signer::new(&current, &previous)
    }

    fn new(current: &EcdsaKeyPair, previous: &[EcdsaKeyPair]) -> Result<Signer, KeyError> {
        // jsonwebtoken wants PKCS#8; re-encoding also turns a SEC1 key into PKCS#8.
        let pkcs8 = current.to_pkcs8v1().map_err(|_| KeyError::Crypto)?;
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let current_jwk = PublicJwk::of(current)?;

        let mut published = vec![current_jwk.clone()];
        for key_pair in previous {
            let jwk = PublicJwk::of(key_pair)?;
            // The same file listed twice, or the current key kept among the retired ones.
            if !published.iter().any(|p| p.kid == jwk.kid) {
                published.push(jwk);
            }
        }
        let jwks = json!({ "keys": published.iter().map(PublicJwk::to_json).collect::<Vec<_>>() });
        let jwks_bytes = Bytes::from(serde_json::to_vec(&jwks).map_err(|_| KeyError::Crypto)?);

        // `alg` and `kid` only. `typ: JWT` is optional (RFC 7519 §5.1), no verifier of this
        // token needs it, and it names no token kind, so it would not guard against confusing
        // this token with another JWT either (RFC 8725 §3.11 asks for a specific type for
        // that); leaving it out keeps 16 bytes off every request's headers (docs/contract.md
        // §5 size budget).
        let mut header = Header::new(Algorithm::ES256);
        header.typ = None;
        header.kid = Some(current_jwk.kid.clone());
        Ok(Signer { key, header, kid: current_jwk.kid, jwks, jwks_bytes })
    }

    /// The current key's id (its RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A compact JWS (`{"alg":"ES256","kid":…}`) over `claims`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, SignError> {
        jsonwebtoken::encode(&self.header, claims, &self.key).map_err(SignError)
    }

    /// `{"keys": [current, retired…]}`, public keys only.
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// The JWKS as JSON bytes, ready to serve (a cheap reference-counted clone).
    pub fn jwks_bytes(&self) -> Bytes {
        self.jwks_bytes.clone()
    }
}

fn read_key_file(path: &Path) -> anyhow::Result<EcdsaKeyPair> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_private_key_pem(&pem).with_context(|| format!("{}", path.display()))
}

fn generate_key() -> Result<EcdsaKeyPair, KeyError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| KeyError::Crypto)?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|e| KeyError::Rejected(e.to_string()))
}

/// Parses the one EC private key of a PEM file; other sections (`EC PARAMETERS`, certificates)
/// are skipped.
fn parse_private_key_pem(pem: &[u8]) -> Result<EcdsaKeyPair, KeyError> {
    let mut found = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let der = match section.map_err(|_| KeyError::NoPrivateKey)? {
            (SectionKind::PrivateKey | SectionKind::EcPrivateKey, der) => der,
            (SectionKind::RsaPrivateKey, _) => return Err(KeyError::NotEcKey),
            _ => continue,
        };
        if found.replace(der).is_some() {
            return Err(KeyError::SeveralKeys);
        }
    }
    let der = found.ok_or(KeyError::NoPrivateKey)?;
    // Accepts PKCS#8 and SEC1 alike, and rejects any curve but P-256. A PKCS#8 RSA key fails
    // here too, reported as not a P-256 key.
    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
        .map_err(|e| KeyError::Rejected(e.to_string()))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
    use serde_json::Value;

    use super::*;
    use crate::entitlements::EntitlementClaims;

    const PKCS8: &[u8] = include_bytes!("../../tests/fixtures/es256-pkcs8.pem");
    const SEC1: &[u8] = include_bytes!("../../tests/fixtures/es256-sec1.pem");
    const SEC1_WITH_PARAMS: &[u8] = include_bytes!("../../tests/fixtures/es256-sec1-with-params.pem");
    const PREVIOUS: &[u8] = include_bytes!("../../tests/fixtures/es256-previous-pkcs8.pem");
    const P384: &[u8] = include_bytes!("../../tests/fixtures/p384-pkcs8.pem");
    /// A throwaway 1024-bit RSA key in the PKCS#1 form (`openssl genrsa -traditional`).
    const RSA_PKCS1: &[u8] = include_bytes!("../../tests/fixtures/rsa-pkcs1.pem");

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn claims() -> EntitlementClaims {
        EntitlementClaims {
            iss: "identity-sidecar".into(),
            aud: "apps".into(),
            sub: "user-1".into(),
            iat: 4_000_000_000,
            exp: 4_000_000_300,
            email: Some("ada@example.com".into()),
            preferred_username: Some("ada".into()),
            name: Some("Ada".into()),
            organizations: Vec::new(),
            contracts: Vec::new(),
            active_organization: Some("acme".into()),
        }
    }

    /// Verifies `token` the way an app would: find the key by `kid` in the published JWKS.
    fn verify_with_published_jwks(signer: &Signer, token: &str) -> EntitlementClaims {
        let header = decode_header(token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.typ, None, "no `typ`: the header is `alg` and `kid` only");
        let set: JwkSet = serde_json::from_slice(&signer.jwks_bytes()).unwrap();
        let jwk = set.find(header.kid.as_deref().unwrap()).expect("kid published");
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["apps"]);
        validation.set_issuer(&["identity-sidecar"]);
        decode::<EntitlementClaims>(token, &key, &validation).unwrap().claims
    }

    fn kids(signer: &Signer) -> Vec<String> {
        signer.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_signed_token_verifies_with_the_published_jwk() {
        let signer = Signer::from_pem(PKCS8, &[]).unwrap();
        let token = signer.sign(&claims()).unwrap();
        assert_eq!(decode_header(&token).unwrap().kid.as_deref(), Some(signer.kid()));
        assert_eq!(verify_with_published_jwks(&signer, &token), claims());
        // The header is as short as it can be: the algorithm and the key, nothing else.
        let head = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            format!(r#"{{"alg":"ES256","kid":"{}"}}"#, signer.kid())
        );
    }

    #[test]
    fn a_tampered_token_does_not_verify() {
        let signer = Signer::from_pem(PKCS8, &[]).unwrap();
        let token = signer.sign(&claims()).unwrap();
        let mut forged = claims();
        forged.sub = "someone-else".into();
        let other = signer.sign(&forged).unwrap();
        // The payload of one token with the signature of another.
        let (head_payload, _) = other.rsplit_once('.').unwrap();
        let (_, signature) = token.rsplit_once('.').unwrap();
        let spliced = format!("{head_payload}.{signature}");
        let set: JwkSet = serde_json::from_slice(&signer.jwks_bytes()).unwrap();
        let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["apps"]);
        assert!(decode::<EntitlementClaims>(&spliced, &key, &validation).is_err());
    }

    #[test]
    fn the_jwks_lists_public_members_only_with_use_alg_and_kid() {
        let signer = Signer::from_pem(PKCS8, &[]).unwrap();
        let keys = signer.jwks()["keys"].as_array().unwrap().clone();
        assert_eq!(keys.len(), 1);
        let key = keys[0].as_object().unwrap();
        let mut names: Vec<&str> = key.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "ES256");
        assert_eq!(key["x"].as_str().unwrap().len(), 43, "32 bytes, base64url without padding");
        let bytes: Value = serde_json::from_slice(&signer.jwks_bytes()).unwrap();
        assert_eq!(&bytes, signer.jwks());
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint_and_stable_for_the_same_key() {
        let signer = Signer::from_pem(PKCS8, &[]).unwrap();
        let jwk: Jwk = serde_json::from_value(signer.jwks()["keys"][0].clone()).unwrap();
        assert_eq!(jwk.thumbprint(ThumbprintHash::SHA256).unwrap(), signer.kid());
        assert_eq!(Signer::from_pem(PKCS8, &[]).unwrap().kid(), signer.kid());
        // The same key in SEC1 form is the same key.
        assert_eq!(Signer::from_pem(SEC1, &[]).unwrap().kid(), signer.kid());
    }

    #[test]
    fn previous_keys_are_published_after_the_current_one_and_still_verify() {
        let old = Signer::from_pem(PREVIOUS, &[]).unwrap();
        let old_token = old.sign(&claims()).unwrap();
        let rotated = Signer::from_pem(PKCS8, &[PREVIOUS, PKCS8, PREVIOUS]).unwrap();
        assert_eq!(kids(&rotated), [rotated.kid(), old.kid()], "current first, duplicates dropped");
        assert_ne!(rotated.kid(), old.kid());
        assert_eq!(verify_with_published_jwks(&rotated, &old_token), claims());
        let new_token = rotated.sign(&claims()).unwrap();
        assert_eq!(decode_header(&new_token).unwrap().kid.as_deref(), Some(rotated.kid()));
    }

    #[test]
    fn without_a_key_file_an_ephemeral_key_signs_and_is_flagged() {
        let (signer, ephemeral) = Signer::from_files(None, &[]).unwrap();
        assert!(ephemeral);
        let token = signer.sign(&claims()).unwrap();
        assert_eq!(verify_with_published_jwks(&signer, &token), claims());
        let (other, _) = Signer::from_files(None, &[]).unwrap();
        assert_ne!(other.kid(), signer.kid(), "each process generates its own key");
        assert_eq!(Signer::ephemeral().unwrap().jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn key_files_load_from_disk_in_pkcs8_and_openssl_default_forms() {
        let (signer, ephemeral) = Signer::from_files(
            Some(&fixture("es256-pkcs8.pem")),
            &[fixture("es256-previous-pkcs8.pem"), fixture("es256-sec1-with-params.pem")],
        )
        .unwrap();
        assert!(!ephemeral);
        assert_eq!(signer.kid(), Signer::from_pem(PKCS8, &[]).unwrap().kid());
        assert_eq!(kids(&signer).len(), 3);
        let with_params = Signer::from_pem(SEC1_WITH_PARAMS, &[]).unwrap();
        let token = with_params.sign(&claims()).unwrap();
        assert_eq!(verify_with_published_jwks(&with_params, &token), claims());
    }

    #[test]
    fn unusable_keys_are_refused_with_the_file_named_and_no_key_material() {
        assert!(matches!(Signer::from_pem(P384, &[]), Err(KeyError::Rejected(_))));
        assert_eq!(Signer::from_pem(b"not a pem", &[]).unwrap_err(), KeyError::NoPrivateKey);
        assert_eq!(Signer::from_pem(RSA_PKCS1, &[]).unwrap_err(), KeyError::NotEcKey);
        let both = [PKCS8, PREVIOUS].concat();
        assert_eq!(Signer::from_pem(&both, &[]).unwrap_err(), KeyError::SeveralKeys);
        assert!(matches!(Signer::from_pem(PKCS8, &[P384]), Err(KeyError::Rejected(_))));

        let err = Signer::from_files(Some(&fixture("p384-pkcs8.pem")), &[]).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("entitlements.signing_key_file"), "{text}");
        assert!(text.contains("p384-pkcs8.pem"), "{text}");
        assert!(!text.contains("MIG"), "{text}");
        let err = Signer::from_files(None, &[fixture("missing.pem")]).unwrap_err();
        assert!(format!("{err:#}").contains("entitlements.previous_key_files"), "{err:#}");
    }

    #[test]
    fn debug_output_shows_the_kid_and_no_key() {
        let signer = Signer::from_pem(PKCS8, &[]).unwrap();
        let printed = format!("{signer:?}");
        assert!(printed.contains(signer.kid()) && !printed.contains("MIG"), "{printed}");
    }
}

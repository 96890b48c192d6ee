//! The fake issuer's keys and signatures: signing-key material, its JWK, the JWS signing step
//! and the claims of a Keycloak access token.
//!
//! One file for every fake issuer of the project except the demo's (product code): the fake
//! Keycloak and the attack tokens of the integration tests, the micro benchmarks
//! (`benches/micro.rs`) and the token minting of `scripts/bench` (`examples/bench-helpers.rs`)
//! include it with `#[path]`, so it names nothing of the test helpers, only crates.
//!
//! Keys are generated at runtime with aws-lc-rs, never checked in. EC and Ed25519 keys take
//! microseconds, so every caller gets a fresh one. A 2048-bit RSA key takes tens of
//! milliseconds, so RSA keys come from a process-wide pool that grows on demand: slot 0 is the
//! JWKS's `use: "enc"` key, slot 1 the attacker's RSA key, slots 2.. are handed out in order to
//! each fake Keycloak (so keys inside one fake Keycloak are always distinct, while hundreds of
//! tests share a handful of generated keys).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// The kind of a signing key. One kind can sign with several algorithms: an RSA key signs
/// RS256/384/512 and PS256/384/512.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// 2048-bit RSA (Keycloak's default realm key).
    Rs256,
    /// ECDSA on P-256.
    Es256,
    /// ECDSA on P-384.
    Es384,
    /// Ed25519.
    EdDSA,
}

impl KeyKind {
    /// The algorithm this kind is published with unless told otherwise.
    pub fn default_alg(self) -> Algorithm {
        match self {
            KeyKind::Rs256 => Algorithm::RS256,
            KeyKind::Es256 => Algorithm::ES256,
            KeyKind::Es384 => Algorithm::ES384,
            KeyKind::EdDSA => Algorithm::EdDSA,
        }
    }

    /// Whether a key of this kind can produce signatures for `alg`.
    pub fn signs(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rs256 => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::Es256 => alg == ES256,
            KeyKind::Es384 => alg == ES384,
            KeyKind::EdDSA => alg == EdDSA,
        }
    }
}

/// One private key with everything the fakes need to publish and use it.
pub struct KeyMaterial {
    /// What kind of key this is.
    pub kind: KeyKind,
    /// The private key in the form `jsonwebtoken::crypto::sign` takes.
    pub encoding: EncodingKey,
    /// The public key as JWK members (`kty`, `n`/`e`, `crv`/`x`/`y`), without `kid`/`use`/`alg`.
    pub public_jwk: Map<String, Value>,
    /// The public key as a DER `SubjectPublicKeyInfo`.
    pub spki_der: Vec<u8>,
}

impl KeyMaterial {
    /// A fresh key of this kind; RSA keys come from the process-wide pool (`rsa_slot`).
    pub fn generate(kind: KeyKind) -> Arc<KeyMaterial> {
        match kind {
            KeyKind::Rs256 => panic!("RSA keys come from rsa_slot(), not generate()"),
            KeyKind::Es256 => Arc::new(ec(&ECDSA_P256_SHA256_FIXED_SIGNING, kind, Algorithm::ES256)),
            KeyKind::Es384 => Arc::new(ec(&ECDSA_P384_SHA384_FIXED_SIGNING, kind, Algorithm::ES384)),
            KeyKind::EdDSA => Arc::new(ed25519()),
        }
    }

    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`), exactly as a JWKS-to-PEM tool
    /// or a naive verifier would hold it — the HMAC secret of the classic alg-confusion attack.
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", &self.spki_der)
    }

    /// The published JWK: public members plus `kid`, `use: "sig"` and `alg`.
    pub fn jwk(&self, kid: &str, alg: Algorithm) -> Value {
        let mut jwk = self.public_jwk.clone();
        jwk.insert("kid".into(), json!(kid));
        jwk.insert("use".into(), json!("sig"));
        jwk.insert("alg".into(), json!(alg));
        Value::Object(jwk)
    }

    /// A self-signed X.509 certificate (DER) for this key, so `x5c`/`x5u` attacks carry a
    /// certificate a naive verifier could really take a key from.
    pub fn self_signed_cert_der(&self) -> Vec<u8> {
        x509::self_signed(self)
    }
}

impl KeyMaterial {
    /// An RSA key read from a PKCS#8 PEM file's text (`openssl genpkey -algorithm RSA`), for
    /// tools that share one key between processes.
    pub fn rsa_from_pkcs8_pem(text: &str) -> Result<KeyMaterial, String> {
        let block = ::pem::parse(text).map_err(|e| format!("not PEM: {e}"))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(format!("expected a PKCS#8 PRIVATE KEY, found {}", block.tag()));
        }
        let pair = RsaKeyPair::from_pkcs8(block.contents()).map_err(|e| format!("not an RSA key: {e}"))?;
        let encoding = EncodingKey::from_rsa_pem(text.as_bytes()).map_err(|e| format!("RSA PEM: {e}"))?;
        let spki_der = pair.public_key().as_der().map_err(|e| format!("RSA SPKI: {e}"))?.as_ref().to_vec();
        Ok(finish(KeyKind::Rs256, encoding, Algorithm::RS256, spki_der))
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

/// base64url without padding, as JWS uses it.
pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.payload` — the JWS signing input.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(serde_json::to_vec(header).expect("header JSON")),
        b64url(serde_json::to_vec(claims).expect("claims JSON"))
    )
}

/// Sign `header`/`claims` with `key` and `alg`, whatever the header says.
///
/// Assembled by hand and signed with `jsonwebtoken::crypto::sign`, the routine
/// `jsonwebtoken::encode` uses, because tests need header members `encode` cannot write
/// (`crit`, custom `typ`, no `kid`, a lying `alg`).
pub fn jws(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = signing_input(header, claims);
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("signing");
    format!("{input}.{signature}")
}

/// The claims of a Keycloak 26 access token from `issuer`, valid for `ttl_secs` from now: a
/// fresh `sub`, `sid` and `jti`, audience `account`, client `app`, the realm's default roles
/// and scope `organization:*`. Callers override what their case is about.
pub fn access_token_claims(issuer: &str, ttl_secs: i64) -> Map<String, Value> {
    let now = now();
    let claims = json!({
        "exp": now + ttl_secs,
        "iat": now,
        "auth_time": now,
        "jti": format!("onrtac:{}", Uuid::new_v4()),
        "iss": issuer,
        "aud": "account",
        "sub": Uuid::new_v4().to_string(),
        "typ": "Bearer",
        "azp": "app",
        "sid": Uuid::new_v4().to_string(),
        "acr": "1",
        "allowed-origins": ["http://localhost:3000"],
        "realm_access": {"roles": ["default-roles-test", "offline_access", "uma_authorization"]},
        "resource_access": {"account": {"roles": ["manage-account", "manage-account-links", "view-profile"]}},
        "scope": "openid email profile organization:*",
        "email_verified": true,
        "name": "Test User",
        "preferred_username": "testuser",
        "given_name": "Test",
        "family_name": "User",
        "email": "testuser@example.com",
    });
    let Value::Object(claims) = claims else { unreachable!("a JSON object literal") };
    claims
}

/// RSA key `slot` from the process-wide pool, generated on first use.
pub fn rsa_slot(slot: usize) -> Arc<KeyMaterial> {
    static POOL: Mutex<Vec<Arc<KeyMaterial>>> = Mutex::new(Vec::new());
    // Generating under the lock is deliberate: concurrent tests wanting the same new slot wait
    // for one generation instead of each doing their own.
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    while pool.len() <= slot {
        pool.push(Arc::new(rsa()));
    }
    pool[slot].clone()
}

/// Slot of the JWKS's encryption key.
pub const RSA_SLOT_ENC: usize = 0;
/// Slot of the attacker's RSA key (never published by a fake Keycloak).
pub const RSA_SLOT_ATTACKER: usize = 1;
/// First slot handed out to realm signing keys.
pub const RSA_SLOT_FIRST_REALM: usize = 2;

fn rsa() -> KeyMaterial {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
    let pkcs8 = pair.as_der().expect("RSA PKCS#8");
    let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).expect("RSA PEM");
    let spki_der = pair.public_key().as_der().expect("RSA SPKI").as_ref().to_vec();
    finish(KeyKind::Rs256, encoding, Algorithm::RS256, spki_der)
}

fn ec(
    signing: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
    kind: KeyKind,
    alg: Algorithm,
) -> KeyMaterial {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &SystemRandom::new()).expect("EC keygen");
    let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref()).expect("EC PKCS#8");
    let spki_der = pair.public_key().as_der().expect("EC SPKI").as_ref().to_vec();
    finish(kind, EncodingKey::from_ec_der(pkcs8.as_ref()), alg, spki_der)
}

fn ed25519() -> KeyMaterial {
    // jsonwebtoken wants the 48-byte PKCS#8 v1 form (v2 also embeds the public key).
    let pkcs8 = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new()).expect("Ed25519 keygen");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 PKCS#8");
    let spki_der = pair.public_key().as_der().expect("Ed25519 SPKI").as_ref().to_vec();
    finish(KeyKind::EdDSA, EncodingKey::from_ed_der(pkcs8.as_ref()), Algorithm::EdDSA, spki_der)
}

fn finish(kind: KeyKind, encoding: EncodingKey, alg: Algorithm, spki_der: Vec<u8>) -> KeyMaterial {
    let jwk = Jwk::from_encoding_key(&encoding, alg).expect("JWK from key");
    let Value::Object(mut public_jwk) = serde_json::to_value(&jwk).expect("JWK to JSON") else {
        unreachable!("a JWK serialises to an object")
    };
    for member in ["kid", "use", "alg", "key_ops"] {
        public_jwk.remove(member);
    }
    KeyMaterial { kind, encoding, public_jwk, spki_der }
}

/// PEM armour with 64-column lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A random key id in Keycloak's shape (43 base64url characters).
pub fn random_kid() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Just enough DER to write one self-signed certificate.
mod x509 {
    use super::{KeyKind, KeyMaterial};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::Algorithm;

    const SHA256_WITH_RSA: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 0x0b];
    const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 2];
    const ECDSA_SHA384: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 3];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    const COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[&[u8]]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn unsigned_integer(be: &[u8]) -> Vec<u8> {
        let trimmed: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
        let mut content = if trimmed.is_empty() { vec![0] } else { trimmed };
        if content[0] & 0x80 != 0 {
            content.insert(0, 0);
        }
        tlv(0x02, &content)
    }

    pub fn self_signed(key: &KeyMaterial) -> Vec<u8> {
        let (sig_alg, jws_alg) = match key.kind {
            KeyKind::Rs256 => (seq(&[SHA256_WITH_RSA, &[0x05, 0x00]]), Algorithm::RS256),
            KeyKind::Es256 => (seq(&[ECDSA_SHA256]), Algorithm::ES256),
            KeyKind::Es384 => (seq(&[ECDSA_SHA384]), Algorithm::ES384),
            KeyKind::EdDSA => (seq(&[ED25519]), Algorithm::EdDSA),
        };
        let name = seq(&[&tlv(0x31, &seq(&[COMMON_NAME, &tlv(0x0c, b"attacker")]))]);
        let validity = seq(&[&tlv(0x17, b"250101000000Z"), &tlv(0x17, b"491231235959Z")]);
        let tbs = seq(&[
            &tlv(0xa0, &unsigned_integer(&[2])), // [0] EXPLICIT version v3
            &unsigned_integer(&rand::random::<[u8; 8]>()),
            &sig_alg,
            &name,
            &validity,
            &name,
            &key.spki_der,
        ]);
        let signature =
            jsonwebtoken::crypto::sign(&tbs, &key.encoding, jws_alg).expect("certificate signature");
        let mut signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url signature");
        if matches!(key.kind, KeyKind::Es256 | KeyKind::Es384) {
            // JWS carries r‖s; X.509 wants SEQUENCE { INTEGER r, INTEGER s }.
            let (r, s) = signature.split_at(signature.len() / 2);
            signature = seq(&[&unsigned_integer(r), &unsigned_integer(s)]);
        }
        let mut bit_string = vec![0u8]; // no unused bits
        bit_string.extend(signature);
        seq(&[&tbs, &sig_alg, &tlv(0x03, &bit_string)])
    }
}

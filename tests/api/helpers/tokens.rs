//! Access tokens as the fake Keycloak issues them, and hostile ones.
//!
//! [`TokenBuilder`] starts from the claims of a real Keycloak 26 access token (so a test only
//! states what it is about) and signs with the realm's default key; both the claims and the
//! signing step are the shared fake issuer's ([`super::keys`], also used by the benchmarks).
//! [`Attacks`] builds the tokens the sidecar must reject, each named after the attack.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value, json};

use super::keycloak::{Inner, Signer};
use super::keys::{KeyKind, access_token_claims, jws, signing_input};
pub use super::keys::{b64url, now};

/// Decode the claims of a compact JWS without checking anything (for assertions).
pub fn peek_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a compact JWS has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
        .expect("JSON payload")
}

/// Decode the header of a compact JWS without checking anything (for assertions).
pub fn peek_header(token: &str) -> Value {
    let header = token.split('.').next().expect("a compact JWS has a header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url header")).expect("JSON header")
}

/// Which `kid` the header carries.
#[derive(Clone)]
enum KidChoice {
    /// The signing key's kid.
    Signer,
    /// This value, whatever key signs.
    Set(String),
    /// No `kid` member.
    Omit,
}

/// A Keycloak-shaped access token under construction. Every setter returns the builder.
#[derive(Clone)]
pub struct TokenBuilder {
    kc: Arc<Inner>,
    claims: Map<String, Value>,
    header: Map<String, Value>,
    removed_header: Vec<String>,
    key: Option<String>,
    kid: KidChoice,
    alg: Option<Algorithm>,
}

impl TokenBuilder {
    pub(crate) fn new(kc: Arc<Inner>) -> TokenBuilder {
        let claims = access_token_claims(&kc.issuer(), 300);
        TokenBuilder {
            kc,
            claims,
            header: Map::new(),
            removed_header: Vec::new(),
            key: None,
            kid: KidChoice::Signer,
            alg: None,
        }
    }

    /// Set any claim (replaces the default).
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.into(), value);
        self
    }

    /// Drop a claim, e.g. `remove_claim("typ")` or `remove_claim("sub")`.
    pub fn remove_claim(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    pub fn sub(self, sub: &str) -> Self {
        self.claim("sub", json!(sub))
    }

    pub fn email(self, email: &str) -> Self {
        self.claim("email", json!(email))
    }

    pub fn name(self, name: &str) -> Self {
        self.claim("name", json!(name))
    }

    pub fn given_name(self, name: &str) -> Self {
        self.claim("given_name", json!(name))
    }

    pub fn family_name(self, name: &str) -> Self {
        self.claim("family_name", json!(name))
    }

    pub fn preferred_username(self, username: &str) -> Self {
        self.claim("preferred_username", json!(username))
    }

    pub fn azp(self, azp: &str) -> Self {
        self.claim("azp", json!(azp))
    }

    /// `aud` as given: a string or an array.
    pub fn aud(self, aud: Value) -> Self {
        self.claim("aud", aud)
    }

    pub fn iss(self, iss: &str) -> Self {
        self.claim("iss", json!(iss))
    }

    pub fn scope(self, scope: &str) -> Self {
        self.claim("scope", json!(scope))
    }

    /// The `organization` claim in any shape (`["acme"]`, `{"acme": {"id": …}}`, `"acme"`).
    pub fn organization(self, claim: Value) -> Self {
        self.claim("organization", claim)
    }

    pub fn sid(self, sid: &str) -> Self {
        self.claim("sid", json!(sid))
    }

    /// The `typ` claim (`Bearer` by default; `ID`, `Refresh`, `Logout` are Keycloak's others).
    pub fn typ(self, typ: &str) -> Self {
        self.claim("typ", json!(typ))
    }

    /// `exp` = now + `secs` (negative for an expired token).
    pub fn exp_in(self, secs: i64) -> Self {
        self.claim("exp", json!(now() + secs))
    }

    /// `iat` = now + `secs`.
    pub fn iat_in(self, secs: i64) -> Self {
        self.claim("iat", json!(now() + secs))
    }

    /// `nbf` = now + `secs`.
    pub fn nbf_in(self, secs: i64) -> Self {
        self.claim("nbf", json!(now() + secs))
    }

    /// `realm_access.roles`.
    pub fn realm_roles(self, roles: &[&str]) -> Self {
        self.claim("realm_access", json!({ "roles": roles }))
    }

    /// `resource_access.<client>.roles` (other clients' roles stay).
    pub fn client_roles(mut self, client: &str, roles: &[&str]) -> Self {
        let access = self.claims.entry("resource_access").or_insert_with(|| json!({}));
        access[client] = json!({ "roles": roles });
        self
    }

    /// Set a header member (`typ`, `cty`, `crit`, anything). Wins over the defaults, `alg` too:
    /// the signature is still made with the builder's algorithm.
    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.removed_header.retain(|n| n != name);
        self.header.insert(name.into(), value);
        self
    }

    /// Drop a header member, e.g. `remove_header("typ")`.
    pub fn remove_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self.removed_header.push(name.into());
        self
    }

    /// Sign with this realm key (default: the realm's default signer). The header `kid`
    /// follows unless [`TokenBuilder::kid`] or [`TokenBuilder::no_kid`] says otherwise.
    pub fn key(mut self, kid: &str) -> Self {
        self.key = Some(kid.into());
        self
    }

    /// Put this `kid` in the header whatever key signs (e.g. an unknown one).
    pub fn kid(mut self, kid: &str) -> Self {
        self.kid = KidChoice::Set(kid.into());
        self
    }

    /// Leave `kid` out of the header.
    pub fn no_kid(mut self) -> Self {
        self.kid = KidChoice::Omit;
        self
    }

    /// Sign with `alg` instead of the algorithm the key is published with (it must suit the
    /// key: RS*/PS* for RSA keys).
    pub fn alg(mut self, alg: Algorithm) -> Self {
        self.alg = Some(alg);
        self
    }

    /// The claims as they will be signed (attack builders take these).
    pub fn claims(&self) -> Value {
        Value::Object(self.claims.clone())
    }

    fn signer(&self) -> Signer {
        self.kc.signer(self.key.as_deref())
    }

    fn header_for(&self, signer: &Signer, alg: Algorithm) -> Value {
        let mut header = Map::new();
        header.insert("alg".into(), json!(alg));
        header.insert("typ".into(), json!("JWT"));
        match &self.kid {
            KidChoice::Signer => {
                header.insert("kid".into(), json!(signer.kid));
            }
            KidChoice::Set(kid) => {
                header.insert("kid".into(), json!(kid));
            }
            KidChoice::Omit => {}
        }
        for name in &self.removed_header {
            header.remove(name);
        }
        header.extend(self.header.clone());
        Value::Object(header)
    }

    /// The compact JWS.
    pub fn sign(self) -> String {
        let signer = self.signer();
        let alg = self.alg.unwrap_or(signer.alg);
        assert!(signer.material.kind.signs(alg), "key {} cannot sign {alg:?}", signer.kid);
        let header = self.header_for(&signer, alg);
        jws(&header, &self.claims(), &signer.material.encoding, alg)
    }
}

/// Builders for tokens the sidecar must reject.
///
/// Key-injection attacks (`jwk`, `jku`, `x5u`, `x5c`) are by default signed with the
/// attacker's key — same kind and algorithm as the realm's default signer, presented under the
/// default signer's kid — and carry that attacker key in the header: a verifier that trusts
/// the header accepts them, one that uses only the JWKS does not. [`Attacks::realm_signed`]
/// signs them with the real default key instead, so only the header itself is wrong: that
/// variant shows the header is refused on principle rather than by luck.
#[derive(Clone)]
pub struct Attacks {
    kc: Arc<Inner>,
    realm_signed: bool,
}

impl Attacks {
    pub(crate) fn new(kc: Arc<Inner>) -> Attacks {
        Attacks { kc, realm_signed: false }
    }

    /// Sign key-injection attacks with the realm's real default key.
    pub fn realm_signed(mut self) -> Self {
        self.realm_signed = true;
        self
    }

    fn injected_signer(&self) -> Signer {
        if self.realm_signed { self.kc.signer(None) } else { self.kc.attacker() }
    }

    fn base_header(signer: &Signer) -> Map<String, Value> {
        let Value::Object(h) = json!({"alg": signer.alg, "typ": "JWT", "kid": signer.kid}) else {
            unreachable!()
        };
        h
    }

    fn signed(&self, extra: Value, claims: &Value) -> String {
        let signer = self.injected_signer();
        let mut header = Self::base_header(&signer);
        if let Value::Object(extra) = extra {
            header.extend(extra);
        }
        jws(&Value::Object(header), claims, &signer.material.encoding, signer.alg)
    }

    /// `alg: none`, empty signature, default kid.
    pub fn alg_none(&self, claims: &Value) -> String {
        let header = json!({"alg": "none", "typ": "JWT", "kid": self.kc.signer(None).kid});
        format!("{}.", signing_input(&header, claims))
    }

    /// HS256 keyed with the PEM of a realm RSA public key (the default signer when it is RSA),
    /// header `kid` of that key: the classic RS256→HS256 algorithm confusion.
    pub fn hs256_with_public_key(&self, claims: &Value) -> String {
        let rsa = self.kc.find_signer(|kind, _| *kind == KeyKind::Rs256).expect("the realm has no RSA key");
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": rsa.kid});
        let secret = EncodingKey::from_secret(rsa.material.public_pem().as_bytes());
        jws(&header, claims, &secret, Algorithm::HS256)
    }

    /// The attacker's public key embedded as header `jwk` (CVE-2018-0114).
    pub fn with_embedded_jwk(&self, claims: &Value) -> String {
        let attacker = self.kc.attacker();
        let jwk = attacker.material.jwk(&attacker.kid, attacker.alg);
        self.signed(json!({ "jwk": jwk }), claims)
    }

    /// Header `jku` pointing at a JWKS the attacker controls (served by the fake Keycloak at
    /// `/attacker/jwks.json`, holding the attacker key under the default kid).
    pub fn with_jku(&self, claims: &Value) -> String {
        let url = format!("{}/attacker/jwks.json", self.kc.base_url());
        self.signed(json!({ "jku": url }), claims)
    }

    /// Header `x5u` pointing at the attacker's self-signed certificate (PEM).
    pub fn with_x5u(&self, claims: &Value) -> String {
        let url = format!("{}/attacker/cert.pem", self.kc.base_url());
        self.signed(json!({ "x5u": url }), claims)
    }

    /// Header `x5c` holding the attacker's self-signed certificate.
    pub fn with_x5c(&self, claims: &Value) -> String {
        let cert = STANDARD.encode(self.kc.attacker().material.self_signed_cert_der());
        self.signed(json!({ "x5c": [cert] }), claims)
    }

    /// Validly signed by the realm, with a critical header extension nobody understands.
    pub fn with_crit(&self, claims: &Value) -> String {
        let signer = self.kc.signer(None);
        let mut header = Self::base_header(&signer);
        header.insert("crit".into(), json!(["urn:example:unknown"]));
        header.insert("urn:example:unknown".into(), json!(true));
        jws(&Value::Object(header), claims, &signer.material.encoding, signer.alg)
    }

    /// The realm's header and the claims, with an empty signature.
    pub fn empty_signature(&self, claims: &Value) -> String {
        let signer = self.kc.signer(None);
        format!("{}.", signing_input(&Value::Object(Self::base_header(&signer)), claims))
    }

    /// ES256 header (kid of a realm ES256 key when there is one, else the default kid) with a
    /// 64-byte all-zero signature: r = s = 0 verified as valid by broken ECDSA code
    /// (CVE-2022-21449, "psychic signatures").
    pub fn ecdsa_zero_signature(&self, claims: &Value) -> String {
        let kid = self
            .kc
            .find_signer(|kind, _| *kind == KeyKind::Es256)
            .unwrap_or_else(|| self.kc.signer(None))
            .kid;
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        format!("{}.{}", signing_input(&header, claims), b64url([0u8; 64]))
    }

    /// Header `alg: ES256` with the kid of a realm RSA key, signed with a P-256 key: the key's
    /// type does not match the algorithm.
    pub fn key_type_mismatch(&self, claims: &Value) -> String {
        let rsa = self.kc.find_signer(|kind, _| *kind == KeyKind::Rs256).expect("the realm has no RSA key");
        let ec = super::keys::KeyMaterial::generate(KeyKind::Es256);
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": rsa.kid});
        jws(&header, claims, &ec.encoding, Algorithm::ES256)
    }

    /// Signed by a key the realm never published, under the default signer's kid
    /// (no injected header: plain key substitution).
    pub fn signed_by_stranger(&self, claims: &Value) -> String {
        let attacker = self.kc.attacker();
        let header = Value::Object(Self::base_header(&attacker));
        jws(&header, claims, &attacker.material.encoding, attacker.alg)
    }

    /// A realm-signed JWS whose payload is another signed JWT (`cty: JWT`, nested token).
    pub fn nested(&self, claims: &Value) -> String {
        let signer = self.kc.signer(None);
        let inner_header = Value::Object(Self::base_header(&signer));
        let inner = jws(&inner_header, claims, &signer.material.encoding, signer.alg);
        let mut header = Self::base_header(&signer);
        header.insert("cty".into(), json!("JWT"));
        let input = format!("{}.{}", b64url(serde_json::to_vec(&header).expect("JSON")), b64url(&inner));
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &signer.material.encoding, signer.alg)
            .expect("signing");
        format!("{input}.{signature}")
    }

    /// Five segments shaped like a JWE (RSA-OAEP + A256GCM, kid of the realm's enc key).
    pub fn jwe_like(&self) -> String {
        let header = json!({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": self.kc.enc_kid()});
        format!(
            "{}.{}.{}.{}.{}",
            b64url(serde_json::to_vec(&header).expect("JSON")),
            b64url(rand::random::<[u8; 32]>()),
            b64url(rand::random::<[u8; 12]>()),
            b64url(rand::random::<[u8; 32]>()),
            b64url(rand::random::<[u8; 16]>()),
        )
    }

    /// A valid realm-signed token of at least `bytes` characters (padded with a `pad` claim).
    pub fn oversized(&self, bytes: usize) -> String {
        let mut pad = 0usize;
        loop {
            let token = TokenBuilder::new(self.kc.clone()).claim("pad", json!("x".repeat(pad))).sign();
            if token.len() >= bytes {
                return token;
            }
            // base64url grows 4/3; overshoot a little rather than loop many times.
            pad += (bytes - token.len()) * 3 / 4 + 1;
        }
    }

    /// Not a JWT at all.
    pub fn garbage(&self) -> String {
        "not-a-jwt.%%%.@@@".to_string()
    }
}

//! The token validation policy (SPEC §2). Pure code: no IO, time passed in.

use jsonwebtoken::Algorithm;

/// Parses an algorithm name allowed in `oidc.algorithms`; HMAC and `none` never are.
pub fn parse_allowed_algorithm(name: &str) -> anyhow::Result<Algorithm> {
    let alg: Algorithm = name.parse().map_err(|_| anyhow::anyhow!("unknown algorithm"))?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            anyhow::bail!("HMAC algorithms are never accepted")
        }
        _ => Ok(alg),
    }
}

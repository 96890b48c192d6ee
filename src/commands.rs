//! The small operator commands of docs/contract.md §8 *(v2)*: `health [--ready]`, `hash-token` and
//! `generate-signing-key --out PATH`. They exist so that a distroless image (no shell, no curl,
//! no openssl, no sha256sum) and the documentation need nothing but this binary.
//!
//! Each command is a plain function returning what to print or an error with a one-line
//! message; `main.rs` turns that into output and an exit status. The pure parts (which
//! address to ask, how a pasted token is read) are unit-tested here; the commands themselves
//! are tested against the real binary in `tests/api/commands.rs`.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use identity_sidecar::entitlements::Signer;
use sha2::Digest as _;

/// How long `health` waits for the admin port in total. Docker's HEALTHCHECK and a Kubernetes
/// exec probe have timeouts of their own; this one is shorter, so the command reports a hung
/// server itself, in its own words, instead of being killed without a message.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// The URL `health` asks: `/healthz` (alive) or `/readyz` (ready) on `server.admin_listen`.
/// A wildcard listen address (`0.0.0.0`, `::`) is reached on the loopback of its family,
/// which is where a check inside the container or pod lands.
pub fn health_url(admin_listen: SocketAddr, ready: bool) -> String {
    let ip = match admin_listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let path = if ready { "/readyz" } else { "/healthz" };
    format!("http://{}{path}", SocketAddr::new(ip, admin_listen.port()))
}

/// `identity-sidecar health [--ready]`: `Ok(line)` when the admin port answered 200,
/// otherwise an error whose message is one line saying what came back (or why nothing did).
pub async fn health(admin_listen: SocketAddr, ready: bool) -> anyhow::Result<String> {
    let url = health_url(admin_listen, ready);
    // No proxy (an HTTP_PROXY variable in the image must not divert a loopback check) and no
    // redirects (the admin port never redirects; following one would check something else).
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HEALTH_TIMEOUT)
        .build()
        .context("cannot build an HTTP client")?;
    let response = match client.get(&url).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => bail!("{url}: no answer within {} s", HEALTH_TIMEOUT.as_secs()),
        Err(e) => bail!("{url}: {}", root_cause(&e)),
    };
    let status = response.status();
    if status == reqwest::StatusCode::OK {
        return Ok(format!("{url}: {status}"));
    }
    // A 503 from /readyz is problem JSON whose `detail` says what is missing.
    let body = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .map(|d| format!(" ({})", one_line(&d)))
        .unwrap_or_default();
    bail!("{url}: {status}{detail}")
}

/// The innermost error: "Connection refused (os error 111)" rather than reqwest's
/// "error sending request for url (…)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    one_line(&current.to_string())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The most a pasted token may be: far above any real token, small enough that a wrong
/// redirect (a file piped by mistake) is refused instead of hashed.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The token `hash-token` hashes: `input` without ONE trailing newline (`\n` or `\r\n`, what
/// `echo` or a terminal adds). Anything else is refused rather than changed: a token the admin
/// API could never accept (empty, with whitespace or control or non-ASCII characters — the
/// API takes `Authorization: Bearer X` with X free of whitespace) would yield a hash that
/// matches nothing, and the operator would only find out at the first 401.
pub fn admin_token_from(input: &[u8]) -> anyhow::Result<&str> {
    if input.len() > MAX_TOKEN_BYTES {
        bail!("the input is longer than {MAX_TOKEN_BYTES} bytes: not an admin token");
    }
    let token = input.strip_suffix(b"\r\n").or_else(|| input.strip_suffix(b"\n")).unwrap_or(input);
    if token.is_empty() {
        bail!(
            "the token is empty: pipe the admin token on stdin, e.g. `printf %s \"$TOKEN\" | identity-sidecar hash-token`"
        );
    }
    if let Some(at) = token.iter().position(|b| !b.is_ascii_graphic()) {
        let what = match token[at] {
            b' ' | b'\t' => "a space or tab",
            b'\r' | b'\n' => "a line break (only one trailing newline is trimmed)",
            b if b.is_ascii() => "a control character",
            _ => "a non-ASCII byte",
        };
        bail!(
            "the token holds {what} at byte {}: the admin API only accepts tokens of visible \
             ASCII characters, so this hash would match nothing",
            at + 1
        );
    }
    // Every byte is visible ASCII, so this cannot fail.
    std::str::from_utf8(token).context("the token is not UTF-8")
}

/// `identity-sidecar hash-token`: the lower-case hex SHA-256 of the token read from `input`,
/// the value for `admin.token_sha256`.
pub fn hash_token(input: &[u8]) -> anyhow::Result<String> {
    let token = admin_token_from(input)?;
    Ok(hex::encode(sha2::Sha256::digest(token.as_bytes())))
}

/// `identity-sidecar generate-signing-key --out PATH`: writes a new ES256 (P-256) private key
/// as a PKCS#8 `PRIVATE KEY` PEM, the form `entitlements.signing_key_file` reads, with mode
/// 0600. An existing file (or symlink) is never overwritten: replacing a signing key by
/// accident would invalidate every entitlement token in flight. Returns the key's `kid`.
pub fn generate_signing_key(out: &Path) -> anyhow::Result<String> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("the crypto library failed to generate a P-256 key"))?;
    // LF line ends, as openssl writes them (the crate's default is CRLF).
    let pem = pem::encode_config(
        &pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    // Loaded by the very code `serve` uses, so a file this command writes is one it accepts.
    let kid =
        Signer::from_pem(pem.as_bytes(), &[]).context("the generated key does not load")?.kid().to_owned();

    let mut options = std::fs::OpenOptions::new();
    // `create_new` is O_CREAT|O_EXCL: it fails on an existing file and does not follow a
    // symlink planted at the path.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
            "{} already exists; refusing to overwrite a key (remove it first, or choose another --out)",
            out.display()
        ),
        _ => anyhow::anyhow!("cannot create {}: {e}", out.display()),
    })?;
    let written = file.write_all(pem.as_bytes()).and_then(|()| file.sync_all());
    if let Err(e) = written {
        // Do not leave a truncated key behind for the next start to trip over.
        let _ = std::fs::remove_file(out);
        bail!("cannot write {}: {e}", out.display());
    }
    Ok(kid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_admin_address_is_checked_on_the_loopback_of_its_family() {
        assert_eq!(health_url("0.0.0.0:8081".parse().unwrap(), false), "http://127.0.0.1:8081/healthz");
        assert_eq!(health_url("[::]:9000".parse().unwrap(), true), "http://[::1]:9000/readyz");
        assert_eq!(health_url("10.1.2.3:8081".parse().unwrap(), true), "http://10.1.2.3:8081/readyz");
        assert_eq!(health_url("127.0.0.1:8081".parse().unwrap(), false), "http://127.0.0.1:8081/healthz");
    }

    #[test]
    fn exactly_one_trailing_newline_is_trimmed() {
        assert_eq!(admin_token_from(b"s3cret").unwrap(), "s3cret");
        assert_eq!(admin_token_from(b"s3cret\n").unwrap(), "s3cret");
        assert_eq!(admin_token_from(b"s3cret\r\n").unwrap(), "s3cret");
        assert!(admin_token_from(b"s3cret\n\n").unwrap_err().to_string().contains("line break"));
        assert!(admin_token_from(b"s3cret\r").unwrap_err().to_string().contains("line break"));
    }

    #[test]
    fn a_token_the_admin_api_could_never_accept_is_refused() {
        assert!(admin_token_from(b"").unwrap_err().to_string().contains("empty"));
        assert!(admin_token_from(b"\n").unwrap_err().to_string().contains("empty"));
        assert!(admin_token_from(b"s3cret ").unwrap_err().to_string().contains("space"));
        assert!(admin_token_from(b" s3cret").unwrap_err().to_string().contains("space"));
        assert!(admin_token_from(b"s3\tcret").unwrap_err().to_string().contains("tab"));
        assert!(admin_token_from("sécret".as_bytes()).unwrap_err().to_string().contains("non-ASCII"));
        assert!(admin_token_from(b"s3\x00cret").unwrap_err().to_string().contains("control"));
        assert!(admin_token_from(&[b'a'; MAX_TOKEN_BYTES + 1]).is_err());
        assert!(admin_token_from(&[b'a'; MAX_TOKEN_BYTES]).is_ok());
    }

    #[test]
    fn the_hash_is_lower_case_hex_sha256_of_the_token() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hash_token(b"abc\n").unwrap(), expected);
    }

    #[test]
    fn a_generated_key_is_pkcs8_pem_with_mode_0600_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let kid = generate_signing_key(&path).unwrap();
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        assert_eq!(Signer::from_pem(pem.as_bytes(), &[]).unwrap().kid(), kid);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let again = generate_signing_key(&path).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), pem, "the first key is untouched");
    }
}

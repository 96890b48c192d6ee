//! Enrollment codes (docs/contract.md §1, §7): their format, the failure limiter of redemption, and the
//! redemption itself ([`redeem`]: the decision and the transaction; its routes are
//! [`crate::public::redeem`]).
//!
//! # Format
//!
//! A code is 125 bits from the operating system's CSPRNG (`rand::rngs::OsRng`, i.e.
//! `getrandom`: no user-space generator in between), written as 25 symbols of Crockford's
//! base32 in five groups of five: `7Q2M4-XK9DA-0ZC3R-T8WNE-5HBVG`. The alphabet has no `I`, `L`,
//! `O` or `U`, so nothing is ambiguous when read aloud or copied by hand; 125 bits is above the
//! 122 of a random UUID that docs/contract.md §1 asks for. The grouped upper-case form is what the store
//! holds and the admin API lists.
//!
//! A code typed by a person is read leniently ([`normalize`]): any case, with or without the
//! dashes, spaces allowed, and `O` → `0`, `I`/`L` → `1` as Crockford decoding prescribes. What
//! cannot be a code is answered like an unknown code.
//!
//! A code is a bearer credential: it is never logged, never put in a metric or an audit event.
//! Where one must be referred to, [`fingerprint`] gives the first 8 hex digits of its SHA-256,
//! which identifies it among a contract's codes without revealing it.

use sha2::{Digest, Sha256};

mod limiter;
pub mod redeem;

pub use limiter::{Attempt, FailureLimiter};

/// Crockford's base32 alphabet (digits, then letters without I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Symbols in a code (5 bits each: 125 bits).
pub const SYMBOLS: usize = 25;

/// Symbols per dash-separated group.
const GROUP: usize = 5;

/// Most codes one generation request may create (admin `count`, or `max_learners` without it).
pub const MAX_PER_REQUEST: i64 = 10_000;

/// A new code from the OS CSPRNG, in the canonical grouped form.
pub fn generate() -> Result<String, rand::rand_core::OsError> {
    use rand::TryRngCore as _;
    // 16 bytes = 128 bits, of which the first 125 are used.
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
    let bits = u128::from_be_bytes(bytes);
    let symbols: Vec<u8> =
        (0..SYMBOLS).map(|i| ALPHABET[((bits >> (128 - 5 * (i + 1))) & 0x1f) as usize]).collect();
    Ok(group(&symbols))
}

/// The canonical form of a code as a person may type it, or `None` when it cannot be one.
pub fn normalize(input: &str) -> Option<String> {
    // Longer than any sensible spelling: refused before looking at it (no quadratic work, no
    // megabyte-long store lookups).
    if input.len() > 64 {
        return None;
    }
    let mut symbols = Vec::with_capacity(SYMBOLS);
    for c in input.bytes() {
        let symbol = match c.to_ascii_uppercase() {
            b'-' | b' ' | b'\t' => continue,
            b'O' => b'0',
            b'I' | b'L' => b'1',
            s if ALPHABET.contains(&s) => s,
            _ => return None,
        };
        symbols.push(symbol);
    }
    (symbols.len() == SYMBOLS).then(|| group(&symbols))
}

/// `XXXXX-XXXXX-…` from bare symbols.
fn group(symbols: &[u8]) -> String {
    let chunks: Vec<&str> =
        symbols.chunks(GROUP).map(|c| std::str::from_utf8(c).expect("alphabet is ASCII")).collect();
    chunks.join("-")
}

/// A short, non-reversible reference to a code for audit events and logs: the first 8 hex
/// digits of the SHA-256 of its canonical form.
pub fn fingerprint(code: &str) -> String {
    let digest = Sha256::digest(code.as_bytes());
    hex::encode(&digest[..4])
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generated_codes_are_25_crockford_symbols_in_five_groups_and_differ() {
        let codes: HashSet<String> = (0..1000).map(|_| generate().unwrap()).collect();
        assert_eq!(codes.len(), 1000);
        for code in &codes {
            assert_eq!(code.len(), SYMBOLS + 4, "{code}");
            let groups: Vec<&str> = code.split('-').collect();
            assert_eq!(groups.len(), 5, "{code}");
            assert!(groups.iter().all(|g| g.len() == 5 && g.bytes().all(|b| ALPHABET.contains(&b))));
            assert_eq!(normalize(code).as_deref(), Some(code.as_str()), "canonical codes are fixed points");
        }
        // Every symbol turns up (the encoding uses the whole alphabet, not a biased part of it).
        let used: HashSet<u8> = codes.iter().flat_map(|c| c.bytes()).filter(|b| *b != b'-').collect();
        assert_eq!(used.len(), 32);
    }

    #[test]
    fn typed_codes_are_read_leniently() {
        let canonical = "7Q2M4-XK9DA-0ZC3R-T8WN1-5HBVG";
        for typed in [
            canonical,
            "7q2m4-xk9da-0zc3r-t8wn1-5hbvg",
            "7Q2M4XK9DA0ZC3RT8WN15HBVG",
            " 7Q2M4 XK9DA OZC3R T8WNl 5HBVG ",
            "7Q2M4-XK9DA-0ZC3R-T8WNI-5HBVG",
        ] {
            assert_eq!(normalize(typed).as_deref(), Some(canonical), "{typed:?}");
        }
        for bad in
            ["", "7Q2M4-XK9DA-0ZC3R-T8WN1", "7Q2M4-XK9DA-0ZC3R-T8WN1-5HBVGX", "7Q2M4-XK9DA-0ZC3R-T8WNU-5HBVG"]
        {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
        assert_eq!(normalize(&"A".repeat(10_000)), None);
        assert_eq!(normalize("7Q2M4/XK9DA-0ZC3R-T8WN1-5HBVG"), None);
    }

    #[test]
    fn a_fingerprint_is_8_hex_digits_that_do_not_contain_the_code() {
        let code = "7Q2M4-XK9DA-0ZC3R-T8WN1-5HBVG";
        let fp = fingerprint(code);
        assert_eq!(fp.len(), 8);
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fp, fingerprint(code));
        assert_ne!(fp, fingerprint("7Q2M4-XK9DA-0ZC3R-T8WN1-5HBVH"));
    }
}

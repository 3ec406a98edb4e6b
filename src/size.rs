//! The one parser for sizes in bytes, used by every flag, configuration key and environment
//! variable that takes one (`--sizes`, `memory`, `RFAAS_EM_MEMORY`, `RFAAS_SHM_ARENA_BYTES`).
//!
//! Accepted: a whole number of bytes (`4096`), or a whole number and a unit, case-insensitive,
//! with or without a space: `B`; `KiB` `MiB` `GiB` `TiB` (also `K` `M` `G` `T` and `Ki` `Mi`
//! `Gi` `Ti`), powers of 1024; `KB` `MB` `GB` `TB`, powers of 1000. Anything else — a fraction,
//! a sign, an unknown unit, a value that overflows 64 bits — is an error naming the text.
//!
//! ```
//! use rfaas::size::parse_size;
//! assert_eq!(parse_size("4096").unwrap(), 4096);
//! assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
//! assert_eq!(parse_size("2 MB").unwrap(), 2_000_000);
//! assert!(parse_size("1.5GiB").is_err());
//! ```

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad size {text:?}: {why} (expected bytes, or a whole number with B, KiB, MiB, GiB, TiB, \
     K, M, G, T (powers of 1024) or KB, MB, GB, TB (powers of 1000), e.g. 4096, 64KiB, 16GiB)"
)]
pub struct SizeError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The multiplier of `unit` (already lower case), if it is one.
fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    })
}

/// Parses a size in bytes (see the module docs for the units).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let err = |why| SizeError {
        text: text.to_string(),
        why,
    };
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let n: u64 = num.parse().map_err(|_| err("number too large"))?;
    let mult = unit_bytes(&unit.trim_start().to_ascii_lowercase()).ok_or(err("unknown unit"))?;
    n.checked_mul(mult).ok_or(err("more than 2^64 - 1 bytes"))
}

/// [`parse_size`] for a `usize` no larger than `max` (clap `value_parser`s of sizes).
pub fn parse_size_at_most(text: &str, max: usize) -> Result<usize, SizeError> {
    let n = parse_size(text)?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= max)
        .ok_or(SizeError {
            text: text.to_string(),
            why: "too large here",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes_and_every_unit() {
        let table: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            (" 64 ", 64),
            ("7B", 7),
            ("3K", 3 * 1024),
            ("3KiB", 3 * 1024),
            ("3ki", 3 * 1024),
            ("3KB", 3000),
            ("5MiB", 5 * 1024 * 1024),
            ("5M", 5 * 1024 * 1024),
            ("5mb", 5_000_000),
            ("1GiB", 1024 * 1024 * 1024),
            ("1 GiB", 1024 * 1024 * 1024),
            ("16G", 16 * 1024 * 1024 * 1024),
            ("2GB", 2_000_000_000),
            ("1TiB", 1024u64.pow(4)),
            ("1TB", 1_000_000_000_000),
        ];
        for &(text, want) in table {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refusals_name_the_text_and_the_reason() {
        for (text, why) in [
            ("", "no number"),
            ("GiB", "no number"),
            ("-1", "no number"),
            ("1.5GiB", "unknown unit"),
            ("4X", "unknown unit"),
            ("4 GiB extra", "unknown unit"),
            ("99999999999999999999", "number too large"),
            ("99999999999T", "more than 2^64 - 1 bytes"),
        ] {
            let e = parse_size(text).unwrap_err();
            assert_eq!(e.why, why, "{text}");
            assert!(e.to_string().contains(&format!("{text:?}")), "{e}");
        }
    }

    #[test]
    fn at_most_applies_its_bound() {
        assert_eq!(parse_size_at_most("1MiB", 1 << 20), Ok(1 << 20));
        assert_eq!(
            parse_size_at_most("1MiB", (1 << 20) - 1).unwrap_err().why,
            "too large here"
        );
    }
}

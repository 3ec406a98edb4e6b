//! [`TokenSource`]: where lease tokens come from.

use super::error::SchedError;

/// Where lease tokens come from: the operating system's random generator in production, a
/// seeded sequence in tests (deterministic, not secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// [`crate::control::secret::new_token`]: 32 random bytes, hex encoded.
    Random,
    /// A reproducible sequence from a seed (tests and benchmarks only: guessable).
    Seeded(u64),
}

impl TokenSource {
    /// The next token.
    pub fn next_token(&mut self) -> Result<String, SchedError> {
        match self {
            TokenSource::Random => {
                crate::control::secret::new_token().map_err(|e| SchedError::Token(e.to_string()))
            }
            TokenSource::Seeded(state) => {
                let mut s = String::with_capacity(64);
                for _ in 0..4 {
                    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = *state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^= z >> 31;
                    s.push_str(&format!("{z:016x}"));
                }
                Ok(s)
            }
        }
    }
}

/// Constant-time comparison of a presented token with a lease's.
pub fn token_matches(expected: &str, presented: &str) -> bool {
    crate::control::secret::secrets_equal(expected.as_bytes(), presented.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_and_distinct() {
        let mut seeded = TokenSource::Seeded(7);
        let (a, b) = (seeded.next_token().unwrap(), seeded.next_token().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(TokenSource::Seeded(7).next_token().unwrap(), a);
        let r = TokenSource::Random.next_token().unwrap();
        assert_eq!(r.len(), 64);
        assert!(token_matches(&r, &r.clone()) && !token_matches(&r, &a) && !token_matches(&r, ""));
    }
}

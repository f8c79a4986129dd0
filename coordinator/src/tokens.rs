//! Enrollment token rules, without I/O: how tokens are made and hashed, and
//! whether one may enroll a machine now.

use sha2::{Digest, Sha256};

use drover_protocol::v1::Secret;
use drover_protocol::{ErrorCode, WireError};

use crate::model::{TokenRecord, UnixMillis};

/// Prefix of every token's text, so that a leaked token is recognisable.
pub const TOKEN_PREFIX: &str = "drt_";

/// Longest token text accepted for hashing; anything longer is not a token.
pub const MAX_TOKEN_LEN: usize = 128;

/// A fresh token: its text (shown once) and the hash that is stored.
pub fn generate() -> (Secret, String) {
    let bytes: [u8; 32] = rand::random();
    let text = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = hash(&text);
    (Secret::new(text), hash)
}

/// The stored form of a token's text.
pub fn hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Why a token cannot enroll a machine. Each has its own wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("enrollment token is unknown; create one with `drover tokens create`")]
    Unknown,
    #[error("enrollment token has expired; create a new one with `drover tokens create`")]
    Expired,
    #[error("enrollment token has no uses left; create a new one with `drover tokens create` (--uses N lets one token enroll N machines)")]
    Exhausted,
    #[error("enrollment token was revoked; create a new one with `drover tokens create`")]
    Revoked,
}

impl TokenRefusal {
    pub fn to_wire(self) -> WireError {
        let code = match self {
            TokenRefusal::Unknown | TokenRefusal::Revoked => ErrorCode::TokenUnknown,
            TokenRefusal::Expired => ErrorCode::TokenExpired,
            TokenRefusal::Exhausted => ErrorCode::TokenExhausted,
        };
        WireError::new(code, self.to_string())
    }
}

/// Whether `record` may enroll one more machine at `now`.
pub fn check(record: Option<&TokenRecord>, now: UnixMillis) -> Result<(), TokenRefusal> {
    let record = record.ok_or(TokenRefusal::Unknown)?;
    if record.revoked {
        return Err(TokenRefusal::Revoked);
    }
    if now >= record.expires_at {
        return Err(TokenRefusal::Expired);
    }
    if record.uses_left == 0 {
        return Err(TokenRefusal::Exhausted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_at: u64, uses_left: u32, revoked: bool) -> TokenRecord {
        TokenRecord {
            id: "t".into(),
            hash: "h".into(),
            labels: Default::default(),
            created_at: 0,
            expires_at,
            uses_total: 1,
            uses_left,
            revoked,
            provision: None,
        }
    }

    #[test]
    fn each_refusal_has_its_own_reason() {
        let cases = [
            (None, Err(TokenRefusal::Unknown)),
            (Some(record(100, 1, true)), Err(TokenRefusal::Revoked)),
            (Some(record(50, 1, false)), Err(TokenRefusal::Expired)),
            (Some(record(100, 0, false)), Err(TokenRefusal::Exhausted)),
            (Some(record(100, 1, false)), Ok(())),
        ];
        for (rec, want) in cases {
            assert_eq!(check(rec.as_ref(), 50), want, "{rec:?}");
        }
    }

    #[test]
    fn tokens_are_distinct_and_hashes_do_not_contain_the_text() {
        let (a, ha) = generate();
        let (b, hb) = generate();
        assert_ne!(a.expose(), b.expose());
        assert_ne!(ha, hb);
        assert_eq!(hash(a.expose()), ha);
        assert!(!ha.contains(&a.expose()[TOKEN_PREFIX.len()..]));
        assert!(a.expose().starts_with(TOKEN_PREFIX) && a.expose().len() == 68);
    }
}

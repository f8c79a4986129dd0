//! The seed: what a freshly provisioned VM needs to enroll itself — the
//! coordinator's address and certificate name, the fleet CA (or its
//! SHA-256 when the carrier is too small for the certificate), a one-time
//! enrollment token and the name the provision gave it.
//!
//! One text form for every carrier: `drover-seed-1` followed by
//! `key=value` items separated by `;` or newlines, with no commas, so the
//! same text fits a QEMU `fw_cfg` file, a cloud-init file and an SMBIOS
//! serial (where QEMU's option syntax reserves commas).

use crate::v1::Secret;

/// The first item of every seed.
pub const SEED_MAGIC: &str = "drover-seed-1";
/// Longest seed text accepted.
pub const MAX_SEED_LEN: usize = 16 * 1024;

/// How the seed names the fleet CA.
#[derive(Clone, PartialEq, Eq)]
pub enum CaPin {
    /// The CA certificate itself (DER).
    Certificate(Vec<u8>),
    /// The SHA-256 of the CA certificate's DER: the agent accepts the CA
    /// the coordinator presents only when it has this digest.
    Sha256([u8; 32]),
}

/// A VM's seed. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed {
    /// `host:port` as the VM reaches the coordinator.
    pub coordinator: String,
    /// The name in the coordinator's certificate.
    pub server_name: String,
    pub ca: CaPin,
    pub token: Secret,
    /// The provision's machine name.
    pub name: String,
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seed")
            .field("coordinator", &self.coordinator)
            .field("server_name", &self.server_name)
            .field("name", &self.name)
            .field("token", &self.token)
            .finish()
    }
}

/// Why a seed's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Drover seed: {0}")]
pub struct SeedError(String);

fn err(msg: impl Into<String>) -> SeedError {
    SeedError(msg.into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Whether `value` can be an item's value: printable, no separator.
fn plain(value: &str) -> bool {
    !value.is_empty() && value.len() <= 4096 && value.chars().all(|c| c.is_ascii_graphic() && c != ';' && c != ',')
}

/// Whether `name` can be a provisioned machine's name: 1-63 lowercase
/// letters, digits and dashes, starting with a letter (a DNS label).
pub fn valid_machine_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !name.ends_with('-')
}

impl Seed {
    /// The seed's text, items separated by `separator` (`;` for SMBIOS,
    /// `\n` for files).
    pub fn encode(&self, separator: char) -> String {
        let ca = match &self.ca {
            CaPin::Certificate(der) => format!("ca_der={}", hex(der)),
            CaPin::Sha256(digest) => format!("ca_sha256={}", hex(digest)),
        };
        let items = [
            SEED_MAGIC.to_string(),
            format!("coordinator={}", self.coordinator),
            format!("server_name={}", self.server_name),
            ca,
            format!("token={}", self.token.expose()),
            format!("name={}", self.name),
        ];
        let mut text = items.join(&separator.to_string());
        if separator == '\n' {
            text.push('\n');
        }
        text
    }

    /// Parses a seed's text; every value is checked.
    pub fn parse(text: &str) -> Result<Seed, SeedError> {
        if text.len() > MAX_SEED_LEN {
            return Err(err(format!("longer than {MAX_SEED_LEN} bytes")));
        }
        let mut items = text.split([';', '\n']).map(str::trim).filter(|s| !s.is_empty());
        if items.next() != Some(SEED_MAGIC) {
            return Err(err(format!("it does not start with {SEED_MAGIC}")));
        }
        let (mut coordinator, mut server_name, mut ca, mut token, mut name) = (None, None, None, None, None);
        for item in items {
            let (key, value) = item.split_once('=').ok_or_else(|| err(format!("item {item:?} is not key=value")))?;
            if !plain(value) {
                return Err(err(format!("the value of {key} is empty, too long or holds a space or separator")));
            }
            let slot = match key {
                "coordinator" => &mut coordinator,
                "server_name" => &mut server_name,
                "token" => &mut token,
                "name" => &mut name,
                "ca_der" | "ca_sha256" => {
                    let bytes = unhex(value).ok_or_else(|| err(format!("{key} is not hexadecimal")))?;
                    let pin = if key == "ca_der" {
                        CaPin::Certificate(bytes)
                    } else {
                        CaPin::Sha256(bytes.try_into().map_err(|_| err("ca_sha256 is not 32 bytes"))?)
                    };
                    if ca.replace(pin).is_some() {
                        return Err(err("the CA is given twice"));
                    }
                    continue;
                }
                other => return Err(err(format!("unknown key {other:?}"))),
            };
            if slot.replace(value.to_string()).is_some() {
                return Err(err(format!("{key} is given twice")));
            }
        }
        let missing = |what: &str| err(format!("{what} is missing"));
        let token = token.ok_or_else(|| missing("token"))?;
        if !token.starts_with("drt_") || token.len() > 128 {
            return Err(err("token is not an enrollment token (drt_...)"));
        }
        let name = name.ok_or_else(|| missing("name"))?;
        if !valid_machine_name(&name) {
            return Err(err(format!("name {name:?} is not a machine name (lowercase letters, digits, dashes)")));
        }
        Ok(Seed {
            coordinator: coordinator.ok_or_else(|| missing("coordinator"))?,
            server_name: server_name.ok_or_else(|| missing("server_name"))?,
            ca: ca.ok_or_else(|| missing("ca_der or ca_sha256"))?,
            token: Secret::new(token),
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(ca: CaPin) -> Seed {
        Seed {
            coordinator: "10.0.2.2:7443".into(),
            server_name: "localhost".into(),
            ca,
            token: Secret::new(format!("drt_{}", "ab".repeat(32))),
            name: "web-1".into(),
        }
    }

    #[test]
    fn both_forms_round_trip_and_debug_hides_the_token() {
        for ca in [CaPin::Certificate(vec![0x30, 0x82, 1, 2]), CaPin::Sha256([7; 32])] {
            let s = seed(ca);
            for sep in [';', '\n'] {
                assert_eq!(Seed::parse(&s.encode(sep)).expect("ok"), s);
            }
            assert!(!format!("{s:?}").contains("drt_"));
        }
        assert!(!seed(CaPin::Sha256([7; 32])).encode(';').contains(','));
    }

    #[test]
    fn bad_seeds_are_refused_with_the_reason() {
        let good = seed(CaPin::Sha256([1; 32])).encode('\n');
        let cases = [
            ("", "does not start"),
            (&good.replace("drover-seed-1", "other"), "does not start"),
            (&good.replace("name=web-1", "name=Web 1"), "holds a space"),
            (&good.replace("name=web-1", "name=-x"), "not a machine name"),
            (&good.replace("token=drt_", "token=xyz_"), "not an enrollment token"),
            (&good.replace("ca_sha256=", "ca_sha256=zz"), "not hexadecimal"),
            (&format!("{good}name=b\n"), "given twice"),
            (&format!("{good}extra=1\n"), "unknown key"),
            (&good.replace("coordinator=10.0.2.2:7443\n", ""), "coordinator is missing"),
        ];
        for (text, want) in cases {
            let e = Seed::parse(text).expect_err("an error").to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}

//! A coordinator's address as people write it: `host:port`, where the host
//! is a DNS name, an IPv4 address or a bracketed IPv6 address. Names are
//! resolved at every connection attempt, so a coordinator that moves to a
//! new address is found again without restarting anything.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `host:port`, checked when it is read, resolved when it is dialled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: String,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    #[error("'{0}' has no port: write host:port, e.g. drover.example.net:7443 or 192.0.2.10:7443 ([2001:db8::1]:7443 for IPv6)")]
    NoPort(String),
    #[error("'{0}': the port must be a number from 1 to 65535")]
    BadPort(String),
    #[error("'{0}' is not a host name or IP address (letters, digits, '-' and '.'; IPv6 in brackets)")]
    BadHost(String),
}

impl HostPort {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address when the host is an IP address literal.
    pub fn literal(&self) -> Option<SocketAddr> {
        self.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// Whether to dial over IPv6: only an IPv6 literal says so; names are
    /// dialled at their IPv4 addresses first.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.literal(), Some(SocketAddr::V6(_)))
    }

    /// The addresses the host has now (one lookup, no cache), those of the
    /// family asked for first.
    pub async fn resolve(&self, ipv6: bool) -> Result<Vec<SocketAddr>, std::io::Error> {
        if let Some(addr) = self.literal() {
            return Ok(vec![addr]);
        }
        let mut found: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port)).await?.collect();
        found.sort_by_key(|a| a.is_ipv6() != ipv6);
        found.dedup();
        if found.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no addresses"));
        }
        Ok(found)
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        HostPort { host: addr.ip().to_string(), port: addr.port() }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn valid_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl FromStr for HostPort {
    type Err = HostPortError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                return Err(HostPortError::BadHost(text.into()));
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(HostPortError::BadHost(text.into()));
            }
            let port = after.strip_prefix(':').ok_or_else(|| HostPortError::NoPort(text.into()))?;
            (host, port)
        } else {
            if text.matches(':').count() > 1 {
                // An IPv6 address without brackets: the port cannot be told apart.
                return Err(HostPortError::NoPort(text.into()));
            }
            text.rsplit_once(':').ok_or_else(|| HostPortError::NoPort(text.into()))?
        };
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| HostPortError::BadPort(text.into()))?;
        let host = host.trim_end_matches('.');
        if host.parse::<IpAddr>().is_err() && !valid_name(host) {
            return Err(HostPortError::BadHost(text.into()));
        }
        Ok(HostPort { host: host.to_ascii_lowercase(), port })
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ips_and_bracketed_ipv6_parse_and_print_back() {
        for (text, host, port) in [
            ("drover.example.net:7443", "drover.example.net", 7443),
            ("localhost:1", "localhost", 1),
            ("192.0.2.10:7443", "192.0.2.10", 7443),
            ("[2001:db8::1]:7443", "2001:db8::1", 7443),
            ("Drover.Example.NET.:7443", "drover.example.net", 7443),
        ] {
            let parsed: HostPort = text.parse().expect(text);
            assert_eq!((parsed.host(), parsed.port()), (host, port), "{text}");
            assert_eq!(parsed.to_string().parse::<HostPort>().expect("round trip"), parsed);
        }
        assert!("[2001:db8::1]:7443".parse::<HostPort>().expect("v6").is_ipv6());
        assert!(!"drover.example.net:7443".parse::<HostPort>().expect("name").is_ipv6());
    }

    #[test]
    fn a_missing_port_is_named_with_the_form_to_write() {
        for text in ["drover.example.net", "2001:db8::1", "[2001:db8::1]"] {
            let e = text.parse::<HostPort>().expect_err(text);
            assert!(matches!(e, HostPortError::NoPort(_)), "{text}: {e}");
            assert!(e.to_string().contains("host:port"), "{e}");
        }
        for text in ["host:0", "host:70000", "host:http"] {
            assert!(matches!(text.parse::<HostPort>(), Err(HostPortError::BadPort(_))), "{text}");
        }
        for text in ["bad_name:7443", ":7443", "-x.example:7443", "[nope]:7443", "a..b:7443"] {
            assert!(matches!(text.parse::<HostPort>(), Err(HostPortError::BadHost(_))), "{text}");
        }
    }

    #[tokio::test]
    async fn localhost_resolves_and_literals_need_no_lookup() {
        let local: HostPort = "localhost:7443".parse().expect("parse");
        let found = local.resolve(false).await.expect("localhost resolves");
        assert!(found.iter().all(|a| a.ip().is_loopback() && a.port() == 7443), "{found:?}");
        assert!(found[0].is_ipv4(), "IPv4 first when asked: {found:?}");
        let literal: HostPort = "127.0.0.1:9".parse().expect("parse");
        assert_eq!(literal.resolve(true).await.expect("literal"), vec!["127.0.0.1:9".parse::<SocketAddr>().expect("literal")]);
    }
}

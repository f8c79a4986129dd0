//! Who may see the fleet page: one-time login links (`drover web login`)
//! and the sessions they open, for as long as `limits.web_link_lifetime`
//! and `limits.web_session_lifetime` say. Kept in this coordinator's memory, never in
//! the store: a restart ends every session (log in again). Only SHA-256
//! digests of links and session cookies are held, so a memory dump shows
//! no usable secret; both are bounded, so nobody can make the coordinator
//! hold more than [`MAX_LINKS`] and [`MAX_SESSIONS`] of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use drover_protocol::v1::Role;

use crate::model::AdminRecord;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Links not used yet, at most; a new one past it replaces the oldest.
pub const MAX_LINKS: usize = 256;
/// Sessions open at once, at most; a new one past it ends the oldest.
pub const MAX_SESSIONS: usize = 1_024;

type Digest32 = [u8; 32];

fn digest(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

/// A secret: 32 random bytes, hex.
fn secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// An open session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub admin: String,
    pub role: Role,
    /// When the admin's record was made: a session holds only while the
    /// record that logged in is the one under its name (a name removed
    /// and added again is someone else).
    pub admin_since: u64,
    pub opened_at: u64,
    pub expires_at: u64,
}

#[derive(Debug, Clone)]
struct Link {
    admin: String,
    role: Role,
    admin_since: u64,
    made_at: u64,
    expires_at: u64,
}

/// Why a link opened no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Never made, already used, or replaced.
    Unknown,
    /// Past its five minutes.
    Expired,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Unknown => "This login link is not valid: it was used already or never made. Run `drover web login` for a new one.",
            Refused::Expired => "This login link has expired. Run `drover web login` for a new one and open it within its minutes.",
        }
    }
}

#[derive(Default)]
struct Inner {
    links: HashMap<Digest32, Link>,
    sessions: HashMap<Digest32, Session>,
}

/// The links and sessions of this coordinator.
#[derive(Default)]
pub struct WebSessions {
    inner: Mutex<Inner>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl WebSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new login link's secret for `admin`, valid for `lifetime`, and
    /// when it expires.
    pub fn new_link(&self, admin: &AdminRecord, now: u64, lifetime: Duration) -> (String, u64) {
        let token = secret();
        let expires_at = now + ms(lifetime);
        let mut inner = self.lock();
        inner.links.retain(|_, l| l.expires_at > now);
        if inner.links.len() >= MAX_LINKS {
            if let Some(oldest) = inner.links.iter().min_by_key(|(_, l)| l.made_at).map(|(k, _)| *k) {
                inner.links.remove(&oldest);
            }
        }
        inner.links.insert(digest(&token), Link { admin: admin.name.clone(), role: admin.role, admin_since: admin.created_at, made_at: now, expires_at });
        (token, expires_at)
    }

    /// Uses a link (once): a new session's cookie value and the session,
    /// which lasts `lifetime`.
    pub fn redeem(&self, link: &str, now: u64, lifetime: Duration) -> Result<(String, Session), Refused> {
        let mut inner = self.lock();
        let found = inner.links.remove(&digest(link)).ok_or(Refused::Unknown)?;
        if found.expires_at <= now {
            return Err(Refused::Expired);
        }
        inner.sessions.retain(|_, s| s.expires_at > now);
        if inner.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = inner.sessions.iter().min_by_key(|(_, s)| s.opened_at).map(|(k, _)| *k) {
                inner.sessions.remove(&oldest);
            }
        }
        let cookie = secret();
        let session = Session { admin: found.admin, role: found.role, admin_since: found.admin_since, opened_at: now, expires_at: now + ms(lifetime) };
        inner.sessions.insert(digest(&cookie), session.clone());
        Ok((cookie, session))
    }

    /// The session a cookie holds, while it lasts.
    pub fn session(&self, cookie: &str, now: u64) -> Option<Session> {
        let mut inner = self.lock();
        let key = digest(cookie);
        match inner.sessions.get(&key) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                inner.sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session; the session it was, if any.
    pub fn end(&self, cookie: &str) -> Option<Session> {
        self.lock().sessions.remove(&digest(cookie))
    }

    /// Links and sessions held now.
    pub fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.links.len(), inner.sessions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults of `limits.web_link_lifetime` and
    /// `limits.web_session_lifetime`.
    const LINK_LIFETIME: Duration = Duration::from_secs(5 * 60);
    const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

    fn admin(name: &str, role: Role) -> AdminRecord {
        AdminRecord { name: name.into(), role, created_at: 7, serials: vec![], ssh_keys: vec![] }
    }

    #[test]
    fn a_link_opens_one_session_within_its_minutes() {
        let web = WebSessions::default();
        let (link, expires) = web.new_link(&admin("alice", Role::Viewer), 1_000, LINK_LIFETIME);
        assert_eq!(expires, 1_000 + 300_000);
        let (cookie, session) = web.redeem(&link, 2_000, SESSION_LIFETIME).expect("a fresh link opens a session");
        assert_eq!((session.admin.as_str(), session.admin_since), ("alice", 7));
        assert_eq!(web.redeem(&link, 2_000, SESSION_LIFETIME), Err(Refused::Unknown), "a link is used once");
        assert_eq!(web.session(&cookie, 3_000).map(|s| s.admin), Some("alice".into()));
        assert!(web.session("not-a-cookie", 3_000).is_none());
        assert!(web.session(&cookie, session.expires_at).is_none(), "a session ends at its expiry");

        let (late, _) = web.new_link(&admin("bob", Role::Admin), 0, LINK_LIFETIME);
        assert_eq!(web.redeem(&late, 300_000, SESSION_LIFETIME), Err(Refused::Expired));

        let (link, _) = web.new_link(&admin("carol", Role::Operator), 0, LINK_LIFETIME);
        let (cookie, _) = web.redeem(&link, 1, SESSION_LIFETIME).expect("opens");
        assert_eq!(web.end(&cookie).map(|s| s.admin), Some("carol".into()));
        assert!(web.session(&cookie, 2).is_none(), "logged out");
    }

    #[test]
    fn links_and_sessions_are_bounded_and_kept_as_digests() {
        let web = WebSessions::default();
        let first = web.new_link(&admin("a", Role::Viewer), 0, LINK_LIFETIME).0;
        for i in 0..MAX_LINKS + 50 {
            web.new_link(&admin("a", Role::Viewer), 1 + i as u64, LINK_LIFETIME);
        }
        assert_eq!(web.held().0, MAX_LINKS);
        assert_eq!(web.redeem(&first, 10, SESSION_LIFETIME), Err(Refused::Unknown), "the oldest link made room");
        let mut cookies = Vec::new();
        for i in 0..MAX_SESSIONS + 10 {
            let (link, _) = web.new_link(&admin("a", Role::Viewer), 1_000 + i as u64, LINK_LIFETIME);
            cookies.push(web.redeem(&link, 1_000 + i as u64, SESSION_LIFETIME).expect("opens").0);
        }
        assert_eq!(web.held().1, MAX_SESSIONS);
        assert!(web.session(&cookies[0], 5_000).is_none(), "the oldest session made room");
        assert!(web.session(cookies.last().expect("some"), 5_000).is_some());
        let inner = web.lock();
        assert!(inner.sessions.keys().all(|k| !cookies.iter().any(|c| c.as_bytes() == k)), "only digests are kept");
    }
}

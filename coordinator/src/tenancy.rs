//! Tenants (the operators a provider hosts services for) and the SSH access
//! of the admins who manage them, without I/O.
//!
//! A machine belongs to the tenant named by its `tenant` label. Every new
//! generation for such a machine carries the tenant's data as facts
//! ([`TENANT_FACTS`]) and its generated admin password as the secret
//! [`ADMIN_PASSWORD_SECRET`]. Every new generation for any machine carries the
//! SSH keys of the admins who may log in to it: admins with the `admin` role
//! everywhere, other admins on the machines of the tenants they manage.

use std::collections::{BTreeMap, BTreeSet};

use rand::distr::{Alphanumeric, SampleString};

use drover_protocol::v1::{Access, DeploySpec, LoginKeys, Role, SecretBytes, SecretFile};

use crate::model::{AdminRecord, MachineRecord, TenantRecord};

/// The machine label that names a machine's tenant.
pub const TENANT_LABEL: &str = "tenant";
/// The secret holding the tenant's generated admin password.
pub const ADMIN_PASSWORD_SECRET: &str = "tenant-admin-password";
/// The facts a tenant's machines receive.
pub const TENANT_FACTS: [&str; 4] = ["tenant", "domain", "admin_user", "admin_email"];
/// The admin account name when none is given.
pub const DEFAULT_ADMIN_USER: &str = "admin";
/// The login SSH keys are for when none is given.
pub const DEFAULT_LOGIN: &str = "root";
/// Length of generated admin passwords (letters and digits: ~143 bits).
const PASSWORD_LEN: usize = 24;

/// A tenant's domain: a lower-case DNS name with at least two labels.
pub fn check_domain(domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if domain.len() > 253 || labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(format!("tenant domain {domain:?} is invalid: give the operator's DNS name in lower case, e.g. social.example.org"));
    }
    Ok(())
}

/// An e-mail address: something@domain, no spaces, at most 254 characters.
pub fn check_email(email: &str) -> Result<(), String> {
    let valid = match email.split_once('@') {
        Some((local, host)) => {
            !local.is_empty()
                && host.contains('.')
                && !host.starts_with('.')
                && !host.ends_with('.')
                && !host.contains('@')
                && email.len() <= 254
                && !email.chars().any(|c| c.is_whitespace() || c.is_control() || "<>\"'`$\\".contains(c))
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!("--admin-email {email:?} is not an e-mail address, e.g. admin@social.example.org"))
    }
}

/// A Unix account name: a lower-case letter or `_`, then up to 31 lower-case
/// letters, digits, `_` or `-`. Used for service admin accounts and SSH logins.
pub fn check_account(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= 32 {
        Ok(())
    } else {
        Err(format!("{what} {name:?} is invalid: use a lower-case letter or '_', then up to 31 lower-case letters, digits, '_' or '-'"))
    }
}

/// A fresh admin password.
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LEN)
}

/// An SSH public key, parsed and put in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    /// `ALGORITHM BASE64`.
    pub key: String,
    pub algorithm: String,
    pub fingerprint: String,
    pub comment: String,
}

/// Parses one OpenSSH public key line (`ALGORITHM BASE64 [COMMENT]`), as in
/// `~/.ssh/id_ed25519.pub`. Lines with authorized_keys options are refused:
/// Drover writes the lines, an admin does not get to add `command=` or
/// `permitopen=` to every machine.
pub fn parse_ssh_key(text: &str) -> Result<ParsedKey, String> {
    if text.contains("PRIVATE KEY") {
        return Err("this is a private key; give the public key (the .pub file)".into());
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let line = match lines.as_slice() {
        [line] => *line,
        [] => return Err("the key file holds no public key; give a file such as ~/.ssh/id_ed25519.pub".into()),
        _ => return Err(format!("the key file holds {} keys; add them one at a time", lines.len())),
    };
    let key = ssh_key::PublicKey::from_openssh(line)
        .map_err(|e| format!("not an OpenSSH public key ({e}); give one line like `ssh-ed25519 AAAA... you@host`, without options"))?;
    let comment: String = key.comment().chars().filter(|c| !c.is_control()).take(128).collect();
    let mut bare = key.clone();
    bare.set_comment("");
    let canonical = bare.to_openssh().map_err(|e| format!("cannot encode the key: {e}"))?.trim().to_string();
    Ok(ParsedKey {
        key: canonical,
        algorithm: key.algorithm().as_str().to_string(),
        fingerprint: key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        comment,
    })
}

/// What the coordinator knows about tenants and admins, read once for a
/// batch of new generations.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub tenants: BTreeMap<String, TenantRecord>,
    pub admins: Vec<AdminRecord>,
}

/// What a machine receives beyond the admin's deployment request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras {
    pub facts: BTreeMap<String, String>,
    pub secrets: Vec<SecretFile>,
    pub access: Access,
}

impl Directory {
    pub fn new(tenants: Vec<TenantRecord>, admins: Vec<AdminRecord>) -> Self {
        Directory { tenants: tenants.into_iter().map(|t| (t.domain.clone(), t)).collect(), admins }
    }

    /// The recorded tenant `machine` belongs to, if any.
    pub fn tenant_of(&self, machine: &MachineRecord) -> Option<&TenantRecord> {
        machine.labels.get(TENANT_LABEL).and_then(|d| self.tenants.get(d))
    }

    /// The SSH keys that may log in to `machine`, by login.
    pub fn access(&self, machine: &MachineRecord) -> Access {
        let tenant = self.tenant_of(machine);
        let mut by_login: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for admin in &self.admins {
            let manages = admin.role == Role::Admin || tenant.is_some_and(|t| t.managers.contains(&admin.name));
            if !manages {
                continue;
            }
            for k in &admin.ssh_keys {
                by_login.entry(k.login.as_str()).or_default().insert(format!("{} drover-admin:{}", k.key, admin.name));
            }
        }
        Access { authorized_keys: by_login.into_iter().map(|(login, keys)| LoginKeys { login: login.to_string(), keys: keys.into_iter().collect() }).collect() }
    }

    /// The tenant facts, admin password and SSH access of `machine`.
    pub fn extras(&self, machine: &MachineRecord) -> Extras {
        let mut extras = Extras { access: self.access(machine), ..Extras::default() };
        if let Some(t) = self.tenant_of(machine) {
            let values = [&t.domain, &t.domain, &t.admin_user, &t.admin_email];
            for (key, value) in TENANT_FACTS.iter().zip(values) {
                extras.facts.insert(key.to_string(), value.clone());
            }
            extras.secrets.push(SecretFile {
                name: ADMIN_PASSWORD_SECRET.into(),
                value: SecretBytes::new(t.admin_password.expose().as_bytes().to_vec()),
                owner: None,
                group: None,
                mode: 0o400,
            });
        }
        extras
    }

    /// Refuses a deployment that sets, for a tenant's machine, a fact or
    /// secret the tenant provides, naming the first clash.
    pub fn check_spec(&self, spec: &DeploySpec, machines: &[MachineRecord]) -> Result<(), String> {
        for m in machines {
            let Some(t) = self.tenant_of(m) else { continue };
            if let Some(key) = TENANT_FACTS.iter().find(|k| spec.facts.contains_key(**k)) {
                return Err(format!(
                    "fact {key:?} comes from tenant {} on machine {} ({}); drop --fact {key}, or change the tenant with `drover tenants`",
                    t.domain, m.id, m.hostname
                ));
            }
            if spec.secrets.iter().any(|s| s.name == ADMIN_PASSWORD_SECRET) {
                return Err(format!("secret {ADMIN_PASSWORD_SECRET:?} comes from tenant {} on machine {}; drop that --secret", t.domain, m.id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SshKeyRecord;
    use drover_protocol::v1::Secret;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOh/A5QIaPMDlSH+Cinr6vjFuuXatuXg/QqHu9fmdxC alice@laptop";

    fn machine(id: &str, tenant: Option<&str>) -> MachineRecord {
        let mut m = crate::store::tests::machine(id);
        m.labels.clear();
        if let Some(t) = tenant {
            m.labels.insert(TENANT_LABEL.into(), t.into());
        }
        m
    }

    fn admin(name: &str, role: Role, keys: &[(&str, &str)]) -> AdminRecord {
        AdminRecord {
            name: name.into(),
            role,
            created_at: 0,
            serials: vec![],
            ssh_keys: keys
                .iter()
                .map(|(login, key)| SshKeyRecord {
                    login: login.to_string(),
                    key: key.to_string(),
                    fingerprint: String::new(),
                    algorithm: String::new(),
                    comment: String::new(),
                    added_at: 0,
                })
                .collect(),
        }
    }

    fn tenant(domain: &str, managers: &[&str]) -> TenantRecord {
        TenantRecord {
            domain: domain.into(),
            admin_email: format!("ops@{domain}"),
            admin_user: "owner".into(),
            admin_password: Secret::new("pw-123"),
            managers: managers.iter().map(|m| m.to_string()).collect(),
            created_at: 0,
        }
    }

    #[test]
    fn keys_are_parsed_to_canonical_form_with_a_fingerprint() {
        let k = parse_ssh_key(&format!("# mine\n{ED25519}\n")).expect("parse");
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert!(k.key.starts_with("ssh-ed25519 AAAAC3"), "{}", k.key);
        assert!(!k.key.contains("alice"), "the comment is kept apart: {}", k.key);
        assert_eq!(k.comment, "alice@laptop");
        // As `ssh-keygen -l` prints it for the same key.
        assert_eq!(k.fingerprint, "SHA256:AvqgSLviZ4ScVzh+GQFmLgMPwB/RTx8DmFjncQrXGCQ");
    }

    #[test]
    fn rsa_and_ecdsa_keys_have_the_fingerprints_ssh_keygen_prints() {
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC8R0MLmryle4PN1jCWSPJP9Cq+rYUYjlL9/3TNDCXrlk9hIDGIqcuI1mkJH7AiqKtp/L5uQRmxwcZf8d0zbpeYHrs9XFF+AAhD3CMAvX/+6WR4XpKhvFPVN6SaCSkbOx6ZAlcB33EzDcPOmOYoQaWNhFCC2oXVKj7akVJ48efpUTrxxEM8El0fFSnAJnT7+pckWMPfENN/sA7LUJTa0a79Hgf8DwC+jEsW23/3dUxvV1jL2qND9tB7gKN/1aim4ZeX6ll6DKAuJWshy8hevC0TQBnO+hg5ro+3kUuhh/l17U4X8PDxs1l6OVlIRPOo4WgZ1HXoLgcK4ujTTcV45huT rsa@x";
        let ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNGu9ygFKMR3YO2vhlBhv2zFmvs2h3LtFEBAB+RQHQhCYpjOIOIPZLOmXrojRGuDTp7hbAA8zq3+NgPmra8F2WU= root@ops";
        assert_eq!(parse_ssh_key(rsa).expect("rsa").fingerprint, "SHA256:TrLP3FcSBoVq/afeb8SRrs3l7mJjE083AOFB/LgcKBU");
        assert_eq!(parse_ssh_key(ecdsa).expect("ecdsa").fingerprint, "SHA256:g6fbuHwV5G17hTg7oSq3QpLIZ2soR8htTM3qP2gnRz8");
    }

    #[test]
    fn options_private_keys_garbage_and_several_keys_are_refused() {
        for (text, why) in [
            (format!("command=\"/bin/sh\" {ED25519}"), "OpenSSH public key"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n".to_string(), "private key"),
            ("ssh-ed25519 not-base64".to_string(), "OpenSSH public key"),
            (format!("{ED25519}\n{ED25519}"), "one at a time"),
            ("\n# only a comment\n".to_string(), "no public key"),
        ] {
            let e = parse_ssh_key(&text).expect_err(&text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn names_domains_and_emails_are_checked() {
        assert!(check_domain("social.example.org").is_ok());
        for bad in ["example", "Social.example", "a..b", "-a.b", "a b.c", ""] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
        assert!(check_email("ops@social.example").is_ok());
        for bad in ["ops", "@a.b", "a@b", "a b@c.d", "a@b.c\n", "a$(x)@b.c"] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert!(check_account("login", "root").is_ok());
        for bad in ["Root", "1abc", "a/b", "", "a.b", &"a".repeat(33)] {
            assert!(check_account("login", bad).is_err(), "{bad}");
        }
        let p = generate_password();
        assert_eq!(p.len(), PASSWORD_LEN);
        assert_ne!(p, generate_password());
    }

    #[test]
    fn keys_reach_the_machines_of_the_tenants_their_admin_manages() {
        let directory = Directory::new(
            vec![tenant("a.example", &["alice"]), tenant("b.example", &[])],
            vec![
                admin("root", Role::Admin, &[("root", "ssh-ed25519 ROOT")]),
                admin("alice", Role::Operator, &[("root", "ssh-ed25519 ALICE"), ("deploy", "ssh-ed25519 ALICE2")]),
                admin("bob", Role::Operator, &[("root", "ssh-ed25519 BOB")]),
            ],
        );
        let keys = |m: &MachineRecord| -> Vec<(String, Vec<String>)> { directory.access(m).authorized_keys.into_iter().map(|l| (l.login, l.keys)).collect() };
        assert_eq!(
            keys(&machine("m-a", Some("a.example"))),
            vec![
                ("deploy".to_string(), vec!["ssh-ed25519 ALICE2 drover-admin:alice".to_string()]),
                ("root".to_string(), vec!["ssh-ed25519 ALICE drover-admin:alice".to_string(), "ssh-ed25519 ROOT drover-admin:root".to_string()]),
            ]
        );
        assert_eq!(keys(&machine("m-b", Some("b.example"))), vec![("root".to_string(), vec!["ssh-ed25519 ROOT drover-admin:root".to_string()])]);
        assert_eq!(keys(&machine("m-x", None)), keys(&machine("m-b", Some("b.example"))));
    }

    #[test]
    fn tenant_machines_get_facts_and_the_password_others_nothing() {
        let directory = Directory::new(vec![tenant("a.example", &[])], vec![]);
        let extras = directory.extras(&machine("m-a", Some("a.example")));
        assert_eq!(extras.facts["domain"], "a.example");
        assert_eq!(extras.facts["tenant"], "a.example");
        assert_eq!(extras.facts["admin_user"], "owner");
        assert_eq!(extras.facts["admin_email"], "ops@a.example");
        assert_eq!(extras.secrets.len(), 1);
        assert_eq!(extras.secrets[0].name, ADMIN_PASSWORD_SECRET);
        assert_eq!(extras.secrets[0].value.expose(), b"pw-123");
        assert_eq!(directory.extras(&machine("m-u", Some("unknown.example"))), Extras::default());
        assert_eq!(directory.extras(&machine("m-n", None)), Extras::default());
    }

    #[test]
    fn a_deployment_may_not_override_what_the_tenant_provides() {
        let directory = Directory::new(vec![tenant("a.example", &[])], vec![]);
        let mut spec = DeploySpec {
            machine: None,
            selector: Default::default(),
            system: drover_protocol::v1::SystemSpec::Flake { uri: "x".into(), attribute: "y".into() },
            secrets: vec![],
            facts: [("domain".to_string(), "evil.example".to_string())].into(),
            checks: vec![],
            health_deadline_ms: 1000,
            buckets: vec![],
            volumes: vec![],
            goal: Default::default(),
            force_switch: false,
            override_rollout: false,
            reboot: false,
        };
        let tenant_machine = [machine("m-a", Some("a.example"))];
        let e = directory.check_spec(&spec, &tenant_machine).expect_err("clash");
        assert!(e.contains("\"domain\"") && e.contains("a.example"), "{e}");
        assert!(directory.check_spec(&spec, &[machine("m-n", None)]).is_ok());
        spec.facts.clear();
        assert!(directory.check_spec(&spec, &tenant_machine).is_ok());
    }
}

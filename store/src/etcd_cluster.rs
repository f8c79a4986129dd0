//! Real etcd clusters on loopback, started and stopped by tests and the
//! benchmark: each member its own `etcd` process with its own data
//! directory, ports bound by the kernel. Needs Debian's `etcd-server`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{EtcdBackend, EtcdOptions};

/// One member: its process (while it runs) and its addresses.
pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    dir: PathBuf,
    process: Option<Child>,
}

/// A cluster of members on 127.0.0.1, removed (processes and data) on drop.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    token: String,
    /// Another local address the members take clients on (a network
    /// namespace's veth, for a client inside it).
    also_on: Option<std::net::IpAddr>,
    _dir: tempfile::TempDir,
}

/// A port the kernel chose, free when this returns.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind a loopback port")
}

/// Fails with how to install etcd when it is missing.
pub fn require_etcd() {
    let found = Command::new("etcd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(found, "etcd is not installed: apt-get install etcd-server etcd-client (scripts/test.sh does)");
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_also_on(n, None)
    }

    /// [`EtcdCluster::start`], the members also taking clients on `also_on`
    /// (an address of this host, e.g. the host side of a veth pair into a
    /// network namespace), at the same ports; see [`EtcdCluster::endpoints_at`].
    pub fn start_also_on(n: usize, also_on: Option<std::net::IpAddr>) -> EtcdCluster {
        require_etcd();
        for attempt in 0.. {
            let dir = tempfile::tempdir().expect("tempdir");
            let members: Vec<Member> = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_url: format!("http://127.0.0.1:{}", free_port()),
                    peer_url: format!("http://127.0.0.1:{}", free_port()),
                    dir: dir.path().join(format!("m{i}")),
                    process: None,
                })
                .collect();
            let initial_cluster = members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
            let token = format!("drover-test-{}-{attempt}", std::process::id());
            let mut cluster = EtcdCluster { members, initial_cluster, token, also_on, _dir: dir };
            for i in 0..n {
                cluster.spawn(i, "new");
            }
            if cluster.wait_until_answering(Duration::from_secs(30)) {
                return cluster;
            }
            // A port taken between choosing and binding: try with new ones.
            assert!(attempt < 3, "an etcd cluster of {n} did not start; its logs: {}", cluster.logs());
        }
        unreachable!("the loop returns or panics")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        std::fs::create_dir_all(&m.dir).expect("member directory");
        let log = std::fs::File::create(m.dir.with_extension("log")).expect("log file");
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(match self.also_on {
                Some(ip) => format!("{},{}", m.client_url, m.client_url.replace("127.0.0.1", &ip.to_string())),
                None => m.client_url.clone(),
            })
            .arg("--advertise-client-urls")
            .arg(&m.client_url)
            .arg("--listen-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        self.members[i].process = Some(child);
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Every member's client URL at `ip` (given to [`EtcdCluster::start_also_on`]).
    pub fn endpoints_at(&self, ip: std::net::IpAddr) -> Vec<String> {
        self.endpoints().iter().map(|u| u.replace("127.0.0.1", &ip.to_string())).collect()
    }

    /// Options for a backend under `prefix` that knows every member.
    pub fn options(&self, prefix: &str) -> EtcdOptions {
        EtcdOptions::new(self.endpoints(), prefix)
    }

    fn wait_until_answering(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            let mut options = self.options("drover-probe/");
            options.timeout = Duration::from_secs(2);
            if EtcdBackend::connect(options).is_ok() {
                return true;
            }
            if self.members.iter().all(|m| m.process.is_none()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Kills member `i` (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "member {i} still runs");
        self.spawn(i, "existing");
    }

    /// The members' logs, for a failure message.
    pub fn logs(&self) -> String {
        self.members.iter().map(|m| format!("--- {}:\n{}", m.name, std::fs::read_to_string(m.dir.with_extension("log")).unwrap_or_default())).collect()
    }

    /// Where member `i` keeps its data.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].dir
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

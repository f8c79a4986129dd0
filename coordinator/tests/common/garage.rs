//! A real Garage server for tests: a single node on free loopback ports,
//! its layout assigned through the admin API, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_coordinator::s3::garage::Garage;
use drover_coordinator::s3::{ObjectStoreAdmin, Role};

pub const GARAGE_HINT: &str = "this test needs Garage: install it with `cargo install garage --locked` (scripts/test.sh does this)";

/// The `garage` binary: on PATH, or where `cargo install` puts it.
pub fn garage_bin() -> PathBuf {
    if let Ok(out) = Command::new("sh").args(["-c", "command -v garage"]).output() {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !path.is_empty() {
            return PathBuf::from(path);
        }
    }
    let home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    let path = home.join("bin/garage");
    assert!(path.exists(), "{GARAGE_HINT}");
    path
}

pub struct GarageNode {
    pub dir: PathBuf,
    pub admin_url: String,
    pub s3_url: String,
    pub web_url: String,
    pub rpc_addr: String,
    pub admin_token: String,
    child: Option<Child>,
}

impl GarageNode {
    /// Writes a config (replication factor `replication`, zone-free) and
    /// starts the server. The layout is not assigned.
    pub fn spawn(dir: &Path, rpc_secret: &str, replication: u32) -> GarageNode {
        let token: [u8; 16] = rand_bytes();
        Self::spawn_with_token(dir, rpc_secret, replication, &hex(&token))
    }

    /// As [`GarageNode::spawn`], with a given admin token (one for a cluster).
    pub fn spawn_with_token(dir: &Path, rpc_secret: &str, replication: u32, admin_token: &str) -> GarageNode {
        std::fs::create_dir_all(dir).expect("mkdir");
        let (rpc, s3, web, admin) = (super::free_tcp_port(), super::free_tcp_port(), super::free_tcp_port(), super::free_tcp_port());
        let admin_token = admin_token.to_string();
        let config = format!(
            r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{rpc_secret}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
[s3_web]
bind_addr = "127.0.0.1:{web}"
root_domain = ".web.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{admin_token}"
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("garage.toml"), config).expect("write config");
        let mut node = GarageNode {
            dir: dir.to_path_buf(),
            admin_url: format!("http://127.0.0.1:{admin}"),
            s3_url: format!("http://127.0.0.1:{s3}"),
            web_url: format!("http://127.0.0.1:{web}"),
            rpc_addr: format!("127.0.0.1:{rpc}"),
            admin_token,
            child: None,
        };
        node.start();
        node
    }

    pub fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("garage.log")).expect("log");
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(self.dir.join("garage.toml"))
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start garage: {e}; {GARAGE_HINT}"));
        self.child = Some(child);
        // The admin API answers /health (200 or 503) once it is up.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = std::net::TcpStream::connect(self.admin_url.trim_start_matches("http://")).is_ok();
            if up {
                break;
            }
            assert!(Instant::now() < deadline, "garage did not start; see {}", self.dir.join("garage.log").display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn admin(&self) -> Garage {
        Garage::new(&self.admin_url, self.admin_token.clone()).expect("client")
    }

    /// A single node with its layout applied, healthy.
    pub async fn single(dir: &Path) -> GarageNode {
        let secret: [u8; 32] = rand_bytes();
        let node = GarageNode::spawn(dir, &hex(&secret), 1);
        let admin = node.admin();
        let id = retry(|| admin.node_id()).await;
        admin.apply_layout(&[Role { node: id, zone: "dc1".into(), capacity: 1 << 30 }]).await.expect("layout");
        wait_healthy(&admin).await;
        node
    }
}

impl Drop for GarageNode {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn rand_bytes<const N: usize>() -> [u8; N] {
    rand::random()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn retry<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, drover_coordinator::s3::S3Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "garage did not answer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait_healthy(admin: &Garage) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(h) = admin.health().await {
            if h.status == "healthy" {
                return;
            }
        }
        assert!(Instant::now() < deadline, "garage did not become healthy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A coordinator (in process) whose `[s3]` section points at a Garage admin
/// API with `token` (kept in a 0600 file).
pub async fn coordinator_with_s3(admin_url: &str, s3_url: &str, token: &str) -> super::TestCoordinator {
    let mut fleet = unserved_with_s3(admin_url, s3_url, token, Some("http://{bucket}.web.garage.localhost")).await;
    fleet.serve().await;
    fleet
}

/// The same, not serving yet (a test adds more to its configuration first).
pub async fn unserved_with_s3(admin_url: &str, s3_url: &str, token: &str, public_url: Option<&str>) -> super::TestCoordinator {
    use std::os::unix::fs::PermissionsExt;
    let mut fleet = super::TestCoordinator::start_with(super::Options { no_server: true, ..Default::default() }).await;
    let token_file = fleet.dir.path().join("garage-admin-token");
    std::fs::write(&token_file, token).expect("token file");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    fleet.config.s3 = Some(drover_coordinator::config::S3Config {
        admin_endpoint: admin_url.to_string(),
        admin_token_file: token_file,
        s3_endpoint: s3_url.to_string(),
        region: "garage".into(),
        public_url: public_url.map(str::to_string),
    });
    fleet
}

//! The coordinator's state directory on a small filesystem (ext4 on a loop
//! device) that fills up: changes are refused with an error that says why
//! and what to do, reads keep working, nothing is corrupted, and changes
//! are accepted again as soon as space returns. Runs as root.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{eventually, Options, TestCoordinator};
use drover_coordinator::client::AdminClient;
use drover_coordinator::store::{Store, DB_DIR};
use drover_protocol::v1::{AdminRequest, TokenSpec};
use drover_protocol::ErrorCode;

const MIB: u64 = 1 << 20;

/// An ext4 filesystem of `size` bytes on a loop device, mounted in a
/// temporary directory; unmounted and detached when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
    device: PathBuf,
}

impl SmallFs {
    fn new(size: u64) -> Self {
        assert!(nix::unistd::geteuid().is_root(), "the full-disk test needs root (loop devices, mount); run the test suite as root");
        for tool in ["losetup", "mkfs.ext4"] {
            let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(tool).exists());
            assert!(found, "{tool} is missing; install it: apt-get install util-linux e2fsprogs");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("state.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(size)).expect("image");
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&image).output().expect("losetup");
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let fs = SmallFs { dir, device };
        let mkfs = Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&fs.device).output().expect("mkfs.ext4");
        assert!(mkfs.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&mkfs.stderr));
        std::fs::create_dir(fs.mount_point()).expect("mount point");
        nix::mount::mount(Some(&fs.device), &fs.mount_point(), Some("ext4"), nix::mount::MsFlags::empty(), None::<&str>).expect("mount the small filesystem");
        fs
    }

    fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.mount_point()).expect("statvfs");
        s.blocks_available() * s.fragment_size()
    }

    /// Fills the filesystem until `leave` bytes are free (it has no blocks
    /// reserved for root); returns the filler.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.mount_point().join("filler");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&filler).expect("filler");
        // Extents need metadata blocks too: allocate in ever smaller pieces
        // until not even one block fits (or `leave` is reached).
        let mut piece = self.free().saturating_sub(leave);
        while piece >= 4096 && self.free() > leave {
            let end = std::fs::metadata(&filler).expect("filler").len();
            let piece_now = piece.min(self.free().saturating_sub(leave));
            match nix::fcntl::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), nix::fcntl::FallocateFlags::empty(), end as i64, piece_now as i64) {
                Ok(()) => {}
                Err(nix::errno::Errno::ENOSPC) => piece /= 2,
                Err(e) => panic!("fallocate the filler: {e}"),
            }
        }
        file.sync_all().expect("sync the filler");
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mount_point(), nix::mount::MntFlags::MNT_DETACH);
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

async fn create_token(admin: &AdminClient, name: &str) -> Result<String, drover_protocol::WireError> {
    let spec = TokenSpec { labels: [("name".to_string(), name.to_string())].into(), ttl_ms: 3_600_000, uses: 1 };
    match admin.call(AdminRequest::TokensCreate(spec)).await {
        Ok(answer) => Ok(answer.token_created().expect("TokenCreated").info.id),
        Err(drover_net::client::ClientError::Refused(e)) => Err(e),
        Err(other) => panic!("a token request failed: {other}"),
    }
}

async fn token_names(admin: &AdminClient) -> Vec<String> {
    let tokens = admin.call(AdminRequest::TokensList).await.expect("listing tokens (a read) must work").tokens().expect("Tokens");
    let mut names: Vec<String> = tokens.iter().map(|t| t.labels.get("name").cloned().unwrap_or_default()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_directory_refuses_changes_keeps_reads_and_recovers() {
    let fs = SmallFs::new(128 * MIB);
    let state_dir = fs.mount_point().join("state");
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, state_dir: Some(state_dir.clone()), ..Default::default() }).await;
    fleet.config.limits.min_free_disk_mib = 16;
    fleet.serve().await;
    let admin = fleet.admin().await;

    create_token(&admin, "before").await.expect("a change with room on the disk");

    // Fill it to the last block.
    let filler = fs.fill(0);
    assert!(fs.free() < MIB, "the filesystem is full");
    for attempt in 0..20 {
        let refused = create_token(&admin, &format!("refused-{attempt}")).await.expect_err("a change on a full disk is refused");
        assert_eq!(refused.code, ErrorCode::Unavailable, "{refused:?}");
        assert!(
            refused.message.contains("nearly full") && refused.message.contains("min_free_disk_mib") && refused.message.contains("frees space"),
            "the error says what is wrong and what to do: {}",
            refused.message
        );
    }
    assert_eq!(token_names(&admin).await, ["before"], "reads work, and no refused change is visible");

    // Space returns: changes are accepted again, without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    assert!(eventually(Duration::from_secs(10), || async { create_token(&admin, "after").await.is_ok() }).await, "changes are accepted once space returns");
    assert_eq!(token_names(&admin).await, ["after", "before"]);

    // Nothing was corrupted: the store opens again with exactly what was
    // accepted, and a coordinator serves from it.
    admin.close().await;
    fleet.stop().await;
    let mut reopened = None;
    for _ in 0..50 {
        match Store::open(&state_dir.join(DB_DIR)) {
            Ok(store) => {
                reopened = Some(store);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let store = reopened.expect("the store opens again after the disk was full");
    let mut names: Vec<String> = store.tokens().expect("tokens").iter().map(|t| t.labels.get("name").cloned().unwrap_or_default()).collect();
    names.sort();
    assert_eq!(names, ["after", "before"], "the store holds exactly the accepted changes");
}

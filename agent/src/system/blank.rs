//! Whether a volume's device may be formatted: the blank rule.
//!
//! A device is formatted only when all of these hold:
//!
//! 1. the coordinator vouches for the volume as fresh — Drover created it,
//!    and it was never formatted nor given to a machine before
//!    ([`VolumeMount::fresh`]), and neither the coordinator nor this agent
//!    has recorded it as formatted;
//! 2. `blkid -p` and `wipefs --no-act` find no signature of any kind
//!    (filesystem, partition table, LUKS, RAID, LVM, swap, ...);
//! 3. the device reads as never written: zeroes in every byte of its first
//!    and last MiB and of evenly spread samples across the rest — every
//!    byte, for devices up to [`FULL_SCAN_BYTES`].
//!
//! Why the scan is enough: every format that holds data puts metadata at
//! the start of the device (filesystem superblocks, MBR, GPT, LUKS, LVM,
//! md 1.1/1.2, bcache, swap) or in its last MiB (GPT's backup header, md
//! 0.90/1.0, ZFS's trailing labels), and filesystems spread more of it over
//! the whole device at fixed intervals (ext4's backup superblocks and
//! inode tables every block group of at most 128 MiB, xfs's allocation
//! group headers, btrfs' superblock copies), so a damaged header still
//! leaves non-zero bytes in the first MiB and in the samples. Encrypted or
//! random data is non-zero almost everywhere. What a sample cannot see is
//! raw data some program wrote without any header into bytes between the
//! samples of a device larger than [`FULL_SCAN_BYTES`]; block storage that
//! hands out zeroed volumes (LINSTOR on thin LVM or ZFS, DRBD's initial
//! state) makes a fresh volume read as zeroes everywhere, so a fresh volume
//! passes and anything that was ever written is refused.
//!
//! An operator who knows better says so for one volume
//! ([`VolumeMount::overwrite`]): then the device is formatted unless it
//! already holds the filesystem asked for, which is mounted.

use std::os::unix::fs::FileExt;
use std::path::Path;

use drover_protocol::v1::VolumeMount;

/// Devices up to this size are read whole.
pub const FULL_SCAN_BYTES: u64 = 256 << 20;
/// The head and the tail of a larger device read whole.
pub const EDGE_BYTES: u64 = 1 << 20;
/// Samples across a larger device, between its head and its tail.
pub const SAMPLES: u64 = 256;
/// The bytes of one sample.
pub const SAMPLE_BYTES: u64 = 64 << 10;

const ALIGN: u64 = 4096;

/// What a device holds, as `blkid -p` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Blank,
    Filesystem(String),
    PartitionTable(String),
    Other(String),
}

/// A signature `wipefs` found: its type and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub kind: String,
    pub offset: String,
}

/// What was found on a device before it was mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub probe: Probe,
    pub signatures: Vec<Signature>,
    /// The offset of the first non-zero byte the scan read, if any.
    pub non_zero_at: Option<u64>,
    pub device_bytes: u64,
}

/// What to do with the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It holds the filesystem asked for.
    Mount,
    /// It is blank by the rule (or the operator allowed overwriting it);
    /// the reason names which.
    Format(String),
    /// Anything else: nothing is written; the reason names what was found.
    Refuse(String),
}

/// The regions the scan reads, as (offset, length), in order.
pub fn scan_regions(size: u64) -> Vec<(u64, u64)> {
    if size <= FULL_SCAN_BYTES {
        return if size == 0 { Vec::new() } else { vec![(0, size)] };
    }
    let mut regions = vec![(0, EDGE_BYTES)];
    let body = size - 2 * EDGE_BYTES;
    let middle = (size / 2) / ALIGN * ALIGN;
    let mut middle_done = false;
    for i in 1..=SAMPLES {
        let at = (EDGE_BYTES + body * i / (SAMPLES + 1)) / ALIGN * ALIGN;
        if !middle_done && at >= middle {
            if at > middle {
                regions.push((middle, SAMPLE_BYTES));
            }
            middle_done = true;
        }
        regions.push((at, SAMPLE_BYTES.min(size - EDGE_BYTES - at)));
    }
    regions.push((size - EDGE_BYTES, EDGE_BYTES));
    regions
}

/// The offset of the first non-zero byte in the regions [`scan_regions`]
/// names; `None` when all read as zeroes. Blocking: run it off the async
/// workers.
pub fn first_non_zero(device: &Path, size: u64) -> Result<Option<u64>, String> {
    let file = std::fs::File::open(device).map_err(|e| format!("cannot open {} to read it: {e}", device.display()))?;
    let mut buf = vec![0u8; EDGE_BYTES as usize];
    for (offset, len) in scan_regions(size) {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            let at = offset + done;
            file.read_exact_at(&mut buf[..n], at).map_err(|e| format!("cannot read {} at offset {at}: {e}", device.display()))?;
            if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
                return Ok(Some(at + i as u64));
            }
            done += n as u64;
        }
    }
    Ok(None)
}

/// Reads `blkid -p -o export` output: exit 2 means nothing was found.
pub fn parse_probe(code: i32, stdout: &str) -> Result<Probe, String> {
    if code == 2 {
        return Ok(Probe::Blank);
    }
    if code != 0 {
        return Err(format!("blkid failed with exit code {code}"));
    }
    let field = |name: &str| stdout.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).map(str::to_string);
    if let Some(pt) = field("PTTYPE") {
        return Ok(Probe::PartitionTable(pt));
    }
    match (field("TYPE"), field("USAGE")) {
        (Some(t), Some(u)) if u == "filesystem" => Ok(Probe::Filesystem(t)),
        (Some(t), _) => Ok(Probe::Other(t)),
        (None, _) => Ok(Probe::Other(crate::text::tail(stdout.trim()))),
    }
}

/// Reads `wipefs --no-act --noheadings --output TYPE,OFFSET` output.
pub fn parse_signatures(stdout: &str) -> Vec<Signature> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let kind = fields.next()?.to_string();
            let offset = fields.next().unwrap_or("?").to_string();
            Some(Signature { kind, offset })
        })
        .collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// The blank rule (see the module's documentation). `known_formatted` is
/// this agent's own record of having formatted the volume.
pub fn decide(v: &VolumeMount, known_formatted: bool, found: &Inspection) -> Decision {
    let expected = v.filesystem.as_str();
    if found.probe == Probe::Filesystem(expected.to_string()) {
        return Decision::Mount;
    }
    let holds = match &found.probe {
        Probe::Blank => None,
        Probe::Filesystem(t) => Some(format!("a {t} filesystem, not {expected}")),
        Probe::PartitionTable(t) => Some(format!("a partition table ({t})")),
        Probe::Other(t) => Some(format!("a {t} signature")),
    };
    let signatures = (!found.signatures.is_empty()).then(|| {
        let list: Vec<String> = found.signatures.iter().map(|s| format!("{} at offset {}", s.kind, s.offset)).collect();
        format!("signatures {}", list.join(", "))
    });
    let data = found.non_zero_at.map(|at| format!("non-zero data at offset {at} ({} into the device)", mib(at)));
    let what = [holds.clone(), signatures.clone(), data.clone()].into_iter().flatten().collect::<Vec<_>>().join("; ");
    if v.overwrite {
        let over = if what.is_empty() { "a device that reads as blank".to_string() } else { what };
        return Decision::Format(format!("the operator allowed overwriting it ({over})"));
    }
    let refuse = |why: String| Decision::Refuse(format!("volume {}: {why}; refusing to format it: nothing was written", v.name));
    if v.formatted || known_formatted {
        let now = if what.is_empty() { "no filesystem".to_string() } else { what };
        return refuse(format!(
            "it was formatted before, but its device {} shows {now} now (formatting again could destroy what is left); inspect the device",
            v.device
        ));
    }
    if let Some(holds) = holds {
        return refuse(format!("its device {} holds {holds}", v.device));
    }
    if let Some(signatures) = signatures {
        return refuse(format!("its device {} holds {signatures}", v.device));
    }
    if let Some(data) = data {
        return refuse(format!(
            "its device {} holds {data}: a device that was never written reads as zeroes. If it holds nothing of value, \
             allow the format with `drover volumes allow-format {name} --yes-overwrite {name}`",
            v.device,
            name = v.name
        ));
    }
    if !v.fresh {
        return refuse(format!(
            "it reads as blank, but the coordinator does not vouch for it as new (Drover did not create it, or it was \
             given to a machine before). If it holds nothing of value, allow the format with \
             `drover volumes allow-format {name} --yes-overwrite {name}`",
            name = v.name
        ));
    }
    Decision::Format(format!("blank: new, no signature, and all {} read as zeroes", scanned(found.device_bytes)))
}

fn scanned(size: u64) -> String {
    if size <= FULL_SCAN_BYTES {
        format!("{} of it", mib(size))
    } else {
        format!("its first and last MiB and {SAMPLES} samples across it")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::v1::Filesystem;

    fn volume(fresh: bool, formatted: bool, overwrite: bool) -> VolumeMount {
        VolumeMount {
            name: "data".into(),
            device: "/dev/drbd/by-res/data/0".into(),
            mount_point: "/srv/data".into(),
            filesystem: Filesystem::Ext4,
            size_bytes: 64 << 20,
            formatted,
            restore_snapshot: None,
            fresh,
            overwrite,
        }
    }

    fn blank() -> Inspection {
        Inspection { probe: Probe::Blank, signatures: vec![], non_zero_at: None, device_bytes: 64 << 20 }
    }

    #[test]
    fn only_a_fresh_volume_that_reads_as_zeroes_without_a_signature_is_formatted() {
        assert!(matches!(decide(&volume(true, false, false), false, &blank()), Decision::Format(_)));
        let cases: Vec<(VolumeMount, bool, Inspection, &str)> = vec![
            (volume(false, false, false), false, blank(), "does not vouch"),
            (volume(true, true, false), false, blank(), "formatted before"),
            (volume(true, false, false), true, blank(), "formatted before"),
            (volume(true, false, false), false, Inspection { non_zero_at: Some(4096), ..blank() }, "non-zero data at offset 4096"),
            (
                volume(true, false, false),
                false,
                Inspection { signatures: vec![Signature { kind: "linux_raid_member".into(), offset: "0x3ffe000".into() }], ..blank() },
                "linux_raid_member at offset 0x3ffe000",
            ),
            (volume(true, false, false), false, Inspection { probe: Probe::PartitionTable("gpt".into()), ..blank() }, "partition table (gpt)"),
            (volume(true, false, false), false, Inspection { probe: Probe::Filesystem("xfs".into()), ..blank() }, "xfs filesystem, not ext4"),
            (volume(true, false, false), false, Inspection { probe: Probe::Other("crypto_LUKS".into()), ..blank() }, "crypto_LUKS signature"),
        ];
        for (v, known, found, named) in cases {
            match decide(&v, known, &found) {
                Decision::Refuse(why) => assert!(why.contains(named), "{why:?} names {named:?}"),
                other => panic!("{v:?} {found:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_filesystem_asked_for_is_mounted_and_an_overwrite_formats_anything_else() {
        let ext4 = Inspection { probe: Probe::Filesystem("ext4".into()), ..blank() };
        assert_eq!(decide(&volume(false, true, false), false, &ext4), Decision::Mount);
        assert_eq!(decide(&volume(false, false, true), false, &ext4), Decision::Mount, "an overwrite never formats what it asked for");
        let random = Inspection { non_zero_at: Some(0), ..blank() };
        match decide(&volume(false, true, true), true, &random) {
            Decision::Format(why) => assert!(why.contains("operator allowed") && why.contains("offset 0"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn small_devices_are_read_whole_and_large_ones_at_the_edges_the_middle_and_spread_samples() {
        assert_eq!(scan_regions(64 << 20), vec![(0, 64 << 20)]);
        assert_eq!(scan_regions(0), vec![]);
        let size = 10u64 << 30;
        let regions = scan_regions(size);
        assert_eq!(regions[0], (0, EDGE_BYTES));
        assert_eq!(*regions.last().expect("tail"), (size - EDGE_BYTES, EDGE_BYTES));
        assert!(regions.iter().any(|(at, len)| *at <= size / 2 && size / 2 < at + len), "the middle is read");
        assert!(regions.len() as u64 >= SAMPLES + 2);
        for w in regions.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0 || w[0].0 < w[1].0, "in order: {w:?}");
        }
        let largest_gap = regions.windows(2).map(|w| w[1].0 - (w[0].0 + w[0].1)).max().expect("gaps");
        assert!(largest_gap < size / SAMPLES, "samples are spread evenly: largest gap {largest_gap}");
        for (at, len) in regions {
            assert!(at + len <= size && len > 0);
        }
    }

    #[test]
    fn tool_output_is_read_as_probe_and_signatures() {
        assert_eq!(parse_probe(2, ""), Ok(Probe::Blank));
        assert_eq!(parse_probe(0, "DEVNAME=/dev/loop0\nUUID=x\nTYPE=xfs\nUSAGE=filesystem\n"), Ok(Probe::Filesystem("xfs".into())));
        assert_eq!(parse_probe(0, "DEVNAME=/dev/loop0\nPTUUID=x\nPTTYPE=gpt\n"), Ok(Probe::PartitionTable("gpt".into())));
        assert_eq!(parse_probe(0, "TYPE=crypto_LUKS\nUSAGE=crypto\n"), Ok(Probe::Other("crypto_LUKS".into())));
        assert!(parse_probe(4, "").is_err());
        assert_eq!(
            parse_signatures("crypto_LUKS 0x0\ncrypto_LUKS 0x4000\n"),
            vec![Signature { kind: "crypto_LUKS".into(), offset: "0x0".into() }, Signature { kind: "crypto_LUKS".into(), offset: "0x4000".into() }]
        );
        assert!(parse_signatures("").is_empty());
    }
}

#!/usr/bin/env bash
# Builds the guest image the local QEMU provider boots: a Debian kernel
# (uncompressed, for fast boots under TCG) and an initramfs holding
# busybox, the filesystem tools, the kernel modules a virtio VM needs and
# the `drover-agent` binary with the libraries it links, started at boot.
#
#   scripts/guest-image.sh [--agent PATH | --without-agent] OUT_DIR
#
# OUT_DIR receives `vmlinux`, `initrd.img` and `image.toml` (what was put
# in). The kernel package is downloaded with apt-get (never installed on
# the host) and cached under target/guest-image-cache. `--without-agent`
# builds an image that boots but never enrolls (for tests of a provision
# that times out).
source "$(dirname "$0")/lib.sh"

AGENT="$ROOT/target/debug/drover-agent"
WITH_AGENT=1
while [ $# -gt 1 ]; do
  case "$1" in
    --agent) AGENT="$2"; shift 2 ;;
    --without-agent) WITH_AGENT=0; shift ;;
    *) echo "unknown option $1; usage: $0 [--agent PATH | --without-agent] OUT_DIR" >&2; exit 2 ;;
  esac
done
[ $# -eq 1 ] || { echo "usage: $0 [--agent PATH | --without-agent] OUT_DIR" >&2; exit 2; }
OUT="$1"
need_apt busybox-static e2fsprogs xfsprogs util-linux cpio python3 binutils
if [ "$WITH_AGENT" = 1 ] && [ ! -x "$AGENT" ]; then
  echo "no agent binary at $AGENT; build it with 'cargo build --bin drover-agent' or pass --agent PATH" >&2
  exit 1
fi

# The kernel: the versioned package linux-image-amd64 depends on.
CACHE="$ROOT/target/guest-image-cache"
mkdir -p "$CACHE"
if [ ! -d "$CACHE/kernel/lib/modules" ]; then
  pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
  if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
  fi
  log "downloading the guest kernel ($pkg)"
  (cd "$CACHE" && rm -f ./*.deb && apt-get download -qq -o APT::Sandbox::User=root "$pkg")
  rm -rf "$CACHE/kernel.tmp" && mkdir "$CACHE/kernel.tmp"
  dpkg-deb -x "$CACHE"/*.deb "$CACHE/kernel.tmp"
  mv "$CACHE/kernel.tmp" "$CACHE/kernel"
fi
KERNEL_DIR="$CACHE/kernel"
VMLINUZ="$(find "$KERNEL_DIR/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | head -1)"
MODULES="$(find "$KERNEL_DIR/lib/modules" -mindepth 1 -maxdepth 1 -type d | sort | head -1)"

STAGE="$(mktemp -d /tmp/drover-guest-image.XXXXXX)"
trap 'rm -rf "$STAGE"' EXIT
R="$STAGE/root"
mkdir -p "$R"/{bin,sbin,etc/drover,proc,sys,dev,run,tmp,mnt,lib/modules,var/lib/drover-agent,usr/share/udhcpc}

# busybox and its applets.
cp /bin/busybox "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list); do
  [ -e "$R/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
done

# A program and the libraries it links, at the same paths.
copy_with_libs() {
  local src="$1" dest="$2"
  mkdir -p "$(dirname "$R$dest")"
  rm -f "$R$dest"
  cp "$src" "$R$dest"
  ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' | while read -r lib; do
    [ -e "$R$lib" ] && continue
    mkdir -p "$(dirname "$R$lib")"
    cp -L "$lib" "$R$lib"
  done
}
for tool in mkfs.ext4 e2fsck resize2fs dumpe2fs mkfs.xfs xfs_growfs xfs_db blkid wipefs; do
  copy_with_libs "$(command -v "$tool" || echo "/sbin/$tool")" "/sbin/$tool"
done
if [ "$WITH_AGENT" = 1 ]; then
  copy_with_libs "$AGENT" /bin/drover-agent
  strip "$R/bin/drover-agent"  # debug symbols would double the boot's unpacking time
fi

# Kernel modules, in load order.
MODS="virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio virtio_pci failover net_failover virtio_net virtio_blk qemu_fw_cfg crc32c_generic libcrc32c jbd2 mbcache crc16 ext4 xfs"
: >"$R/etc/modules"
for m in $MODS; do
  f="$(find "$MODULES" -name "$m.ko" -o -name "$m.ko.xz" | head -1)"
  [ -n "$f" ] || continue  # built into this kernel
  case "$f" in
    *.xz) xz -dc "$f" >"$R/lib/modules/$m.ko" ;;
    *) cp "$f" "$R/lib/modules/$m.ko" ;;
  esac
  echo "$m" >>"$R/etc/modules"
done

cat >"$R/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    : >/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    ;;
esac
EOF
chmod 755 "$R/usr/share/udhcpc/default.script"

# The agent's settings baked into the image; the coordinator, CA and token
# come from the VM's seed (fw_cfg, NoCloud or SMBIOS), which the agent reads
# at its first start.
# This busybox guest is not NixOS: its nixos-rebuild is the stand-in that
# records the flake reference it is asked for as the system.
cp "$ROOT/scripts/nixos-rebuild-standin" "$R/sbin/nixos-rebuild"
chmod 755 "$R/sbin/nixos-rebuild"

cat >"$R/etc/drover/image.toml" <<'EOF'
state_dir = "/var/lib/drover-agent"
nixos_rebuild = "/sbin/nixos-rebuild"
runtime_dir = "/run/drover"
current_system = "/run/current-system"
systemctl = "/bin/true"
reboot_command = ["/sbin/reboot", "-f"]
volume_root = "/"
EOF

cat >"$R/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
echo "drover guest: loading modules"
while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null; done </etc/modules
# Stable names for disks: /dev/disk/by-id/virtio-SERIAL, as udev makes them.
mkdir -p /dev/disk/by-id
for b in /sys/block/vd*; do
  [ -e "$b/serial" ] || continue
  s="$(cat "$b/serial")"
  [ -n "$s" ] && ln -sf "/dev/${b##*/}" "/dev/disk/by-id/virtio-$s"
done
ip link set lo up
ip link set eth0 up 2>/dev/null && udhcpc -i eth0 -s /usr/share/udhcpc/default.script -q -n -t 5 -T 1 >/dev/null 2>&1
echo "drover guest: network $(ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')"
# The VM's own system disk keeps the agent's identity across reboots. It is
# formatted only when blkid finds nothing on it (a new VM's blank disk).
SYS=/dev/disk/by-id/virtio-drover-system
if [ -e "$SYS" ]; then
  blkid "$SYS" >/dev/null 2>&1 || mkfs.ext4 -q "$SYS"
  mount "$SYS" /var/lib/drover-agent || echo "drover guest: cannot mount the system disk"
fi
mkdir -p /run/drover
if [ -x /bin/drover-agent ]; then
  echo "drover guest: starting drover-agent"
  while true; do
    /bin/drover-agent run --config /etc/drover/agent.toml --seed-defaults /etc/drover/image.toml 2>&1 | tee -a /dev/console >/dev/null
    echo "drover guest: drover-agent exited; restarting in 2 s"
    sleep 2
  done
fi
echo "drover guest: this image has no agent"
while true; do sleep 3600; done
EOF
chmod 755 "$R/init"

# The uncompressed kernel (xz payload inside the bzImage).
mkdir -p "$OUT"
python3 - "$VMLINUZ" "$OUT/vmlinux.tmp" <<'EOF'
import lzma, sys
data = open(sys.argv[1], "rb").read()
start = data.find(b"\xfd7zXZ")
if start < 0:
    sys.exit("no xz payload in " + sys.argv[1])
out = lzma.LZMADecompressor().decompress(data[start:])
open(sys.argv[2], "wb").write(out)
EOF
mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
(cd "$R" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
cat >"$OUT/image.toml" <<EOF
kernel = "$(basename "$VMLINUZ")"
agent = $([ "$WITH_AGENT" = 1 ] && echo "\"$AGENT\"" || echo "false")
EOF
log "guest image in $OUT ($(du -sh "$OUT/initrd.img" | cut -f1) initramfs)"

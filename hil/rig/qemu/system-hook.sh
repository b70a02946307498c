#!/bin/bash
# After scripts/install-debian.sh ran inside the image root ($1): what makes it an A/B test
# device — RAUC's system.conf (GRUB backend, slots A/B), the partitions in fstab with the
# daemon's state, cache and config on the data partition, the HIL payload behaviours, the
# rig's SSH key and RAUC keyring ($2: a directory with hil-ssh.pub and rauc-ca.pem).
set -euo pipefail
R="$1"; KEYS="$2"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
F="$HERE/files"

# RAUC: GRUB backend on the boot partition, the two root slots
mkdir -p "$R/etc/rauc"
cp "$KEYS/rauc-ca.pem" "$R/etc/rauc/ca.pem"
cat > "$R/etc/rauc/system.conf" <<CONF
[system]
compatible=hil-qemu
bootloader=grub
grubenv=/grub/grub/grubenv
statusfile=/data/rauc.status
bundle-formats=plain verity

[keyring]
path=/etc/rauc/ca.pem

[slot.rootfs.0]
device=/dev/vda2
type=ext4
bootname=A

[slot.rootfs.1]
device=/dev/vda3
type=ext4
bootname=B
CONF

# partitions: GRUB's at /grub, data at /data; the daemon's directories live on data (the
# state directory must survive a slot switch: images/README.md)
mkdir -p "$R/grub" "$R/data"
cat > "$R/etc/fstab" <<FSTAB
/dev/root  /      ext4  rw,errors=remount-ro  0 1
/dev/vda1  /grub  ext2  rw,nofail             0 2
/dev/vda4  /data  ext4  rw                    0 2
/data/lib/ota-daemon    /var/lib/ota-daemon    none  bind,x-systemd.requires-mounts-for=/data  0 0
/data/cache/ota-daemon  /var/cache/ota-daemon  none  bind,x-systemd.requires-mounts-for=/data  0 0
FSTAB
mkdir -p "$R/var/lib/ota-daemon" "$R/var/cache/ota-daemon"

# the configuration lives on the data partition too, so a slot switch keeps what the rig set;
# install-debian.sh wrote /etc/ota-daemon/config.toml: it becomes the data partition's copy
SEED="$R/data-seed"
rm -rf "$SEED"; mkdir -p "$SEED/etc/ota-daemon" "$SEED/lib/ota-daemon" "$SEED/cache/ota-daemon"
chmod 0700 "$SEED/lib/ota-daemon" "$SEED/cache/ota-daemon"
mv "$R/etc/ota-daemon/config.toml" "$SEED/etc/ota-daemon/config.toml.installed"
cp "$F/config.toml" "$SEED/etc/ota-daemon/config.toml"
ln -s /data/etc/ota-daemon/config.toml "$R/etc/ota-daemon/config.toml"

# fault points of the daemon (hil/rig/device.py FAULT_POINTS): a file on the data partition
# the rig writes; hil-boot moves an "at the next boot" list into place before the daemon starts
mkdir -p "$SEED/hil" "$R/etc/systemd/system/ota-daemon.service.d"
echo '[]' > "$SEED/hil/faults.json"
printf '[Service]\nEnvironment=OTA_DAEMON_FAULTS=/data/hil/faults.json\n' > "$R/etc/systemd/system/ota-daemon.service.d/hil-faults.conf"

# HIL: boot marker on the console, payload behaviours, the application health check
install -m 0755 "$F/hil-boot" "$R/usr/local/sbin/hil-boot"
install -m 0755 "$F/hil-health" "$R/usr/local/sbin/hil-health"
install -m 0644 "$F/hil-boot.service" "$R/etc/systemd/system/hil-boot.service"
ln -sf /etc/systemd/system/hil-boot.service "$R/etc/systemd/system/sysinit.target.wants/hil-boot.service"

# the rig logs in as root with its key
mkdir -p "$R/root/.ssh"; chmod 0700 "$R/root/.ssh"
install -m 0600 "$KEYS/hil-ssh.pub" "$R/root/.ssh/authorized_keys"
chroot "$R" ssh-keygen -A >/dev/null

# journald keeps the journal on the slot (it is the slot's own log) and shows boot progress
mkdir -p "$R/var/log/journal" "$R/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=persistent\nSyncIntervalSec=5s\n' > "$R/etc/systemd/journald.conf.d/hil.conf"

# a test device boots often (minutes under TCG): leave out what it does not use
for unit in modprobe@drm.service modprobe@efi_pstore.service modprobe@fuse.service modprobe@configfs.service \
    dev-hugepages.mount dev-mqueue.mount sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
    systemd-pstore.service systemd-random-seed.service; do
    ln -sf /dev/null "$R/etc/systemd/system/$unit"
done

# kernel modules: only what this virtio guest loads (disk, file systems, RAUC's loop and
# squashfs, network, the watchdog); smaller slots install and download faster
KVER="$(ls "$R/lib/modules" | head -1)"
K="$R/lib/modules/$KVER/kernel"
KEEP="$R/lib/modules/$KVER/kernel.keep"
rm -rf "$KEEP"; mkdir -p "$KEEP"
for rel in fs/ext4 fs/jbd2 fs/mbcache.ko fs/squashfs fs/overlayfs fs/fat fs/nls fs/autofs fs/fuse \
    drivers/block/virtio_blk.ko drivers/block/loop.ko drivers/virtio drivers/char/virtio_console.ko \
    drivers/char/hw_random drivers/net/virtio_net.ko drivers/net/net_failover.ko net/core/failover.ko \
    drivers/watchdog/i6300esb.ko drivers/md lib crypto arch; do
    [ -e "$K/$rel" ] || continue
    mkdir -p "$KEEP/$(dirname "$rel")"
    cp -a "$K/$rel" "$KEEP/$rel"
done
rm -rf "$K"; mv "$KEEP" "$K"
chroot "$R" depmod -a "$KVER"
rm -f "$R/usr/lib/udev/hwdb.bin" "$R/etc/udev/hwdb.bin"
rm -rf "$R/opt/ota-daemon/lib/python3.11/site-packages/pip" "$R/usr/share/python-wheels"

#!/bin/bash
# mmdebstrap --customize-hook of the qemu image's Debian root ($1): slim the kernel's module
# tree and initramfs to what a virtio guest needs, set up the network, the serial console
# and the services a test device runs. Part of the image recipe (its hash keys the cache).
set -euo pipefail
R="$1"
KVER="$(ls "$R/lib/modules" | head -1)"
M="$R/lib/modules/$KVER/kernel"
rm -rf "$M/sound" "$M/drivers/gpu" "$M/drivers/media" "$M/drivers/infiniband" "$M/drivers/staging" \
    "$M/drivers/net/wireless" "$M/drivers/net/ethernet" "$M/drivers/bluetooth" "$M/drivers/isdn" \
    "$M/drivers/usb" "$M/drivers/hid" "$M/drivers/iio" "$M/drivers/scsi" "$M/drivers/ata" \
    "$M/drivers/input" "$M/drivers/mtd" "$M/drivers/thunderbolt" "$M/drivers/hwmon" \
    "$M/drivers/platform" "$M/drivers/nvme" "$M/drivers/net/can" "$M/drivers/net/usb" \
    "$M/net/wireless" "$M/net/mac80211" "$M/net/bluetooth" "$M/fs/nls" "$M/fs/ocfs2" "$M/fs/gfs2" \
    "$M/fs/xfs" "$M/fs/btrfs" "$M/fs/nfs" "$M/fs/nfsd" "$M/fs/ceph" "$M/fs/smb" "$M/fs/f2fs"
rm -rf "$R/usr/lib/firmware"
chroot "$R" depmod -a "$KVER"
cp "$R/etc/initramfs-tools/modules-hil" "$R/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/; s/^COMPRESS=.*/COMPRESS=gzip/' "$R/etc/initramfs-tools/initramfs.conf"
chroot "$R" update-initramfs -u -k "$KVER" >/dev/null
echo hil-qemu > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 hil-qemu\n' > "$R/etc/hosts"
chroot "$R" passwd -d root >/dev/null
mkdir -p "$R/etc/systemd/network"
printf '[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' > "$R/etc/systemd/network/50-dhcp.network"
chroot "$R" systemctl enable systemd-networkd.service >/dev/null 2>&1
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
    chroot "$R" systemctl disable "$unit" >/dev/null 2>&1 || true
done
# the hub is reached by address: no resolver wait; no wait-online (the daemon retries)
chroot "$R" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1 || true
mkdir -p "$R/etc/ssh/sshd_config.d"
printf 'UseDNS no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n' > "$R/etc/ssh/sshd_config.d/hil.conf"
rm -f "$R/etc/ssh/ssh_host_"*        # per image (system stage), not per mirror snapshot
apt-get -o RootDir="$R" clean 2>/dev/null || rm -rf "$R/var/cache/apt/archives/"*.deb
rm -rf "$R/var/lib/apt/lists/"*

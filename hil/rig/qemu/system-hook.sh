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

# partitions: GRUB's at /grub, data at /data (no fsck at boot: ext4's journal covers a cut,
# GRUB writes grubenv in place, and each fsck costs ~10 s of a TCG boot); the daemon's directories live on data (the
# state directory must survive a slot switch: images/README.md)
mkdir -p "$R/grub" "$R/data"
cat > "$R/etc/fstab" <<FSTAB
/dev/root  /      ext4  rw,errors=remount-ro  0 0
/dev/vda1  /grub  ext2  rw,nofail             0 0
/dev/vda4  /data  ext4  rw                    0 0
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
# When the daemon dies (a fault point SIGKILLs it), say so on the serial console at once: the rig
# cuts the power on that line. Polling the file over SSH came too late under TCG (the rig's
# reads yield to RAUC, which finished the slot before the cut). The file is synced first, so
# the point that fired stays removed across the cut.
printf '[Service]\nEnvironment=OTA_DAEMON_FAULTS=/data/hil/faults.json\nExecStopPost=/bin/sh -c '"'"'sync -f /data/hil/faults.json; echo "HIL-DAEMON-EXIT result=$$SERVICE_RESULT status=$$EXIT_STATUS" > /dev/ttyS0'"'"'\n' \
    > "$R/etc/systemd/system/ota-daemon.service.d/hil-faults.conf"

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
printf '[Journal]\nStorage=persistent\nSyncIntervalSec=5s\nSystemMaxUse=16M\nSystemKeepFree=4M\n' > "$R/etc/systemd/journald.conf.d/hil.conf"

# a test device boots often (minutes under TCG): leave out what it does not use
for unit in modprobe@drm.service modprobe@efi_pstore.service modprobe@fuse.service modprobe@configfs.service \
    dev-hugepages.mount dev-mqueue.mount sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
    systemd-pstore.service systemd-random-seed.service getty@tty1.service dpkg-db-backup.timer \
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount sys-kernel-config.mount systemd-firstboot.service \
    systemd-repart.service systemd-pcrphase-sysinit.service systemd-pcrphase.service systemd-machine-id-commit.service \
    systemd-update-utmp.service systemd-update-utmp-runlevel.service systemd-ask-password-wall.path \
    systemd-ask-password-console.path systemd-network-generator.service; do
    ln -sf /dev/null "$R/etc/systemd/system/$unit"
done
ln -sf /lib/systemd/system/multi-user.target "$R/etc/systemd/system/default.target"
# generators for what this device has not (LUKS, verity, GPT auto-mounts, SysV scripts)
mkdir -p "$R/etc/systemd/system-generators"
for gen in systemd-cryptsetup-generator systemd-veritysetup-generator systemd-integritysetup-generator \
    systemd-gpt-auto-generator systemd-hibernate-resume-generator systemd-bless-boot-generator \
    systemd-sysv-generator systemd-rc-local-generator systemd-system-update-generator; do
    ln -sf /dev/null "$R/etc/systemd/system-generators/$gen"
done
# udev would load KVM and the AES/GHASH drivers for the emulated CPU's flags: nothing uses them
printf 'blacklist kvm\nblacklist kvm_intel\nblacklist kvm_amd\nblacklist aesni_intel\nblacklist ghash_clmulni_intel\nblacklist polyval_clmulni\nblacklist sha512_ssse3\n' \
    > "$R/etc/modprobe.d/hil-unused.conf"
# the rig's SSH sessions need no PAM session (logind, pam_env): cheaper on the guest's one vCPU
printf 'UseDNS no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n' > "$R/etc/ssh/sshd_config.d/hil.conf"
# and what the rig runs over SSH (state reads every few seconds) yields to the daemon (Nice=10)
# and RAUC: on one emulated vCPU, at nice 0 the rig's reads took most of the CPU from the download
mkdir -p "$R/etc/systemd/system/ssh.service.d"
printf '[Service]\nNice=19\n' > "$R/etc/systemd/system/ssh.service.d/hil-nice.conf"

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
rm -rf "$K/arch/x86/kvm"
chroot "$R" depmod -a "$KVER"
rm -f "$R/usr/lib/udev/hwdb.bin" "$R/etc/udev/hwdb.bin"
rm -rf "$R/opt/ota-daemon/lib/python3.11/site-packages/pip" "$R/usr/share/python-wheels"

# what a slot does not need at run time (RAUC writes every byte of the slot image, the bundle
# carries it, so each MB here costs download, install and boot time on every update). Kept:
# Python's bytecode caches (without them each boot compiles the daemon under TCG), the
# kernel and initramfs, perl-base (dpkg's maintainer scripts).
rm -rf "$R/usr/share/doc" "$R/usr/share/man" "$R/usr/share/info" "$R/usr/share/locale" "$R/usr/share/lintian" \
    "$R/usr/share/bash-completion" "$R/usr/share/perl" "$R/usr/lib/x86_64-linux-gnu/perl" "$R/usr/share/common-licenses" \
    "$R/usr/lib/python3.11/idlelib" "$R/usr/lib/python3.11/lib2to3" "$R/usr/lib/python3.11/pydoc_data" \
    "$R/usr/lib/python3.11/ensurepip" "$R/var/cache/apt/"*.bin "$R/var/cache/debconf/"*-old "$R/var/lib/apt/lists/"* \
    "$R/boot/System.map-"* "$R/boot/config-"* "$R/var/log/"*.log
rm -f "$R/usr/lib/x86_64-linux-gnu/libperl.so"* "$R/usr/lib/x86_64-linux-gnu/gconv/"*.so
rm -rf "$R/opt/ota-daemon/lib/python3.11/site-packages/"{setuptools,pkg_resources,_distutils_hack,wheel,distutils-precedence.pth}
find "$R/usr/share/zoneinfo" -mindepth 1 -maxdepth 1 ! -name Etc ! -name UTC ! -name zone.tab ! -name tzdata.zi -exec rm -rf {} +

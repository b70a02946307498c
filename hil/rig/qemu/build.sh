#!/bin/bash
# Builds the qemu target's disk image and its update bundles (hil/README.md, "The qemu target").
#
#   build.sh base   OUT.dir                    Debian bookworm root from Debian packages (mmdebstrap)
#   build.sh system BASE.dir SRC WHEELS KEYS OUT.dir  + ota-daemon via scripts/install-debian.sh, HIL files
#   build.sh disk   SYSTEM.dir OUT.raw          MBR disk: GRUB (A/B boot-attempt scheme), slots A/B, data
#   build.sh rootfs SYSTEM.dir VERSION BEHAVIOUR OUT.ext4   a slot image of one version
#   build.sh bundle ROOTFS.ext4 VERSION CERT KEY OUT.raucb  a signed RAUC bundle of it
#
# Runs as root (mmdebstrap --mode=root, chroot, losetup, mount). Everything it writes goes to
# the OUT path given; the caller (hil/rig/qemu_image.py) caches the results by recipe hash.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FILES="$HERE/files"
MIRROR="${HIL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SLOT_MB=448        # each root partition (a slot image is sized to its content: SLOT_FREE_MB free)
SLOT_FREE_MB=48    # room on a slot for its journal, logs and bytecode written at run time
BOOT_MB=32         # GRUB's partition: modules, grub.cfg, grubenv
DATA_MB=768        # state, cache and configuration shared by both slots
SYSTEM=hil-qemu    # RAUC compatible and the build-info name

die() { echo "build.sh: $*" >&2; exit 1; }

base() { "$HERE/base.sh" "$@"; }

with_chroot() {  # DIR CMD...: run CMD in DIR with /proc, /sys, /dev mounted
    local dir="$1"; shift
    mount -t proc proc "$dir/proc"
    mount --rbind /dev "$dir/dev"; mount --make-rslave "$dir/dev"
    mount -t sysfs sys "$dir/sys"
    local rc=0
    chroot "$dir" "$@" || rc=$?
    umount "$dir/sys"; umount -R "$dir/dev"; umount "$dir/proc"
    return $rc
}

system() {
    local base="$1" src="$2" wheels="$3" keys="$4" out="$5"
    rm -rf "$out" "$out.tmp"
    cp -a "$base" "$out.tmp"
    mkdir -p "$out.tmp/tmp/ota-src" "$out.tmp/tmp/wheels"
    (cd "$src" && tar --exclude=__pycache__ -cf - pyproject.toml README.md ota_daemon systemd scripts images) | tar -C "$out.tmp/tmp/ota-src" -xf -
    cp "$wheels"/*.whl "$out.tmp/tmp/wheels/"
    # ota-daemon the way images/README.md says for an image root: inside the target, --root /
    with_chroot "$out.tmp" /tmp/ota-src/scripts/install-debian.sh --root / --unit-dir /lib/systemd/system \
        --installer rauc --extras rauc --hub static --path fleet/system/stable --guard-timeout 150s \
        --wheelhouse /tmp/wheels
    rm -rf "$out.tmp/tmp/ota-src" "$out.tmp/tmp/wheels"
    "$HERE/system-hook.sh" "$out.tmp" "$keys"
    rm -rf "$out.data-seed"; mv "$out.tmp/data-seed" "$out.data-seed"
    mv "$out.tmp" "$out"
}

rootfs() {  # SYSTEM_DIR VERSION BEHAVIOUR OUT: one slot's file system image
    local dir="$1" version="$2" behaviour="$3" out="$4"
    local stage="$out.stage"
    rm -rf "$stage" "$out"
    mkdir -p "$stage/etc/hil"
    printf '%s\n' "$version" > "$stage/etc/hil/version"
    printf '%s\n' "$behaviour" > "$stage/etc/hil/behaviour"
    printf '{"name": "%s", "release": {"id": "%s@%s", "version": "%s"}}\n' "$SYSTEM" "$SYSTEM" "$version" "$version" > "$stage/etc/hil/system-build-info.json"
    if [ "$behaviour" = nodaemon ]; then
        # the daemon cannot start in this image (the guard must still get the device out)
        mkdir -p "$stage/etc/systemd/system/ota-daemon.service.d"
        printf '[Service]\nExecStart=\nExecStart=/bin/sh -c "echo HIL: ota-daemon broken in this image; exit 1"\n' \
            > "$stage/etc/systemd/system/ota-daemon.service.d/hil-nodaemon.conf"
    fi
    # the system tree plus this version's files: a read-only overlay, so the tree is not copied
    local merged="$out.merged"
    mkdir -p "$merged"
    mount -t overlay overlay -o "lowerdir=$stage:$dir" "$merged"
    local rc=0
    mkfs.ext4 -q -F -L slot -T default -b 4096 -m 0 -J size=8 -d "$merged" "$out.tmp" "${SLOT_MB}M" || rc=$?
    umount "$merged"
    rm -rf "$stage" "$merged"
    [ $rc = 0 ] || die "mkfs.ext4 -d failed for $out"
    # sized to its content plus room for the slot's own journal and caches: RAUC writes every
    # byte of the image (not only the used blocks), and the bundle carries them
    e2fsck -fy "$out.tmp" >/dev/null 2>&1 || [ $? -le 1 ] || die "e2fsck failed for $out"
    resize2fs -M "$out.tmp" >/dev/null 2>&1 || die "resize2fs -M failed for $out"
    local blocks bsize
    blocks=$(dumpe2fs -h "$out.tmp" 2>/dev/null | sed -n 's/^Block count: *//p')
    bsize=$(dumpe2fs -h "$out.tmp" 2>/dev/null | sed -n 's/^Block size: *//p')
    local want=$(( blocks * bsize / 1048576 + SLOT_FREE_MB ))
    [ "$want" -le "$SLOT_MB" ] || die "slot image of $version needs ${want} MiB, the partition has ${SLOT_MB} MiB"
    resize2fs "$out.tmp" "${want}M" >/dev/null 2>&1 || die "resize2fs ${want}M failed for $out"
    truncate -s "${want}M" "$out.tmp"
    mv "$out.tmp" "$out"
}

bundle() {  # ROOTFS VERSION CERT KEY OUT [COMPATIBLE]
    local img="$1" version="$2" cert="$3" key="$4" out="$5" compatible="${6:-$SYSTEM}"
    local dir="$out.dir"
    rm -rf "$dir" "$out"; mkdir -p "$dir"
    ln "$img" "$dir/rootfs.ext4" 2>/dev/null || cp --sparse=always "$img" "$dir/rootfs.ext4"
    cat > "$dir/manifest.raucm" <<MANIFEST
[update]
compatible=$compatible
version=$version

[bundle]
format=plain

[image.rootfs]
filename=rootfs.ext4
MANIFEST
    rauc --cert "$cert" --key "$key" bundle --mksquashfs-args="-comp lz4" "$dir" "$out.tmp" >/dev/null
    rm -rf "$dir"
    mv "$out.tmp" "$out"
}

disk() {  # SYSTEM_DIR OUT.raw (slot A holds the baseline rootfs given as $3)
    local dir="$1" out="$2" slot_a="$3"
    local tmp="$out.tmp"
    rm -f "$tmp"
    local total=$((1 + BOOT_MB + 2 * SLOT_MB + DATA_MB + 1))
    truncate -s "${total}M" "$tmp"
    sfdisk -q "$tmp" <<PARTS
label: dos
unit: sectors
start=2048, size=$((BOOT_MB * 2048)), type=83, bootable
size=$((SLOT_MB * 2048)), type=83
size=$((SLOT_MB * 2048)), type=83
size=$((DATA_MB * 2048)), type=83
PARTS
    local off_a=$(((1 + BOOT_MB) * 2048)) off_d=$(((1 + BOOT_MB + 2 * SLOT_MB) * 2048))
    dd if="$slot_a" of="$tmp" bs=512 seek="$off_a" conv=notrunc,sparse status=none
    # data partition: the state, cache and config directories shared by both slots
    local data="$out.data"; rm -rf "$data"; mkdir -p "$data"
    cp -a "$dir.data-seed/." "$data/"
    mkfs.ext4 -q -F -L data -d "$data" "$out.data.img" "${DATA_MB}M"
    dd if="$out.data.img" of="$tmp" bs=512 seek="$off_d" conv=notrunc,sparse status=none
    rm -rf "$data" "$out.data.img"
    # GRUB for BIOS without a loop device or grub-install: core.img (its first sector carries
    # the block list of the rest, which grub-mkimage fills in for sector 1) goes right after the
    # MBR, boot.img's code into the MBR (its partition table kept); modules, grub.cfg and
    # grubenv on partition 1, an ext2 file system built from a directory
    local g="$out.grub"; rm -rf "$g"; mkdir -p "$g/fs/grub"
    cp -r /usr/lib/grub/i386-pc "$g/fs/grub/"
    cp "$FILES/grub.cfg" "$g/fs/grub/grub.cfg"
    grub-editenv "$g/fs/grub/grubenv" create
    grub-editenv "$g/fs/grub/grubenv" set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
    grub-mkimage -O i386-pc -p '(hd0,msdos1)/grub' -o "$g/core.img" biosdisk part_msdos ext2
    [ "$(stat -c %s "$g/core.img")" -lt $((2047 * 512)) ] || die "core.img does not fit before partition 1"
    mkfs.ext2 -q -F -L boot -d "$g/fs" "$g/boot.ext2" "${BOOT_MB}M"
    dd if="$g/boot.ext2" of="$tmp" bs=512 seek=2048 conv=notrunc status=none
    dd if="$g/core.img" of="$tmp" bs=512 seek=1 conv=notrunc status=none
    dd if=/usr/lib/grub/i386-pc/boot.img of="$tmp" bs=440 count=1 conv=notrunc status=none
    rm -rf "$g"
    mv "$tmp" "$out"
}

cmd="${1:-}"; shift || true
case "$cmd" in
    base) base "$@" ;;
    system) system "$@" ;;
    rootfs) rootfs "$@" ;;
    bundle) bundle "$@" ;;
    disk) disk "$@" ;;
    *) die "usage: build.sh base|system|rootfs|bundle|disk ..." ;;
esac

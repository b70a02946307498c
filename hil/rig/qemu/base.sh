#!/bin/bash
# Stage 1 of the qemu image (hil/rig/qemu_image.py): a Debian bookworm root directory from
# Debian packages only, with mmdebstrap, then base-hook.sh. This file and base-hook.sh are the
# recipe of the stage: their hash names the cached result.
#   base.sh OUT.dir
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MIRROR="${HIL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Debian packages of the image (recipe: a change here changes the cache key)
PACKAGES="systemd,systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,kmod,python3,python3-venv,\
rauc,rauc-service,grub-common,e2fsprogs,iproute2,openssh-server,squashfs-tools,procps,util-linux"

out="$1"
tmp="$out.tmp"
rm -rf "$tmp"
mmdebstrap --mode=root --format=directory --variant=minbase --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools"; printf "virtio_pci\nvirtio_blk\next4\n" > "$1/etc/initramfs-tools/modules-hil"' \
    --customize-hook="$HERE/base-hook.sh \"\$1\"" \
    bookworm "$tmp" "$MIRROR"
mv "$tmp" "$out"

#!/usr/bin/env bash
# make test-vm: boot a Debian VM of one release with our .deb installed and record its serial console.
#
#   run-vm.sh DEB WORKDIR RELEASE [KERNEL_RELEASE]
#   run-vm.sh --base WORKDIR RELEASE    (step 1 alone: prints the cached base's path)
#
# RELEASE: bullseye, bookworm or trixie. KERNEL_RELEASE, if given, is another of them whose cloud
# kernel the guest boots instead of its own: a kernel for which RELEASE has no headers package.
# 1. A base root file system for RELEASE (debootstrap minbase, systemd, the Debian cloud kernel,
#    graphite-carbon, bpftool; no kernel headers and no compiler, as on a stock cloud host) is
#    built once and cached as a tar in $GSENDER_VM_CACHE (default /var/cache/gsender-bcc-vm),
#    keyed by the release, its package list, its apt sources and this recipe. The packages our
#    .deb depends on are downloaded into it, not installed.
# 2. Our .deb is installed into a copy with a plain `apt-get install` (recommends included, as an
#    operator would), service starts blocked by policy-rc.d; the install fails the run if it
#    brought kernel headers, a compiler or make. The guest gets a short-frequency
#    /etc/gsender.conf, carbon-cache, the check unit (gsender-vm-check.service) and the busy unit
#    it starts for the accuracy check. With GSENDER_VM_CONTAINERS=1 podman, docker.io and
#    busybox-static are installed too, and the check unit runs the container checks (guest-containers.sh).
# 3. mkfs.ext4 -d writes the disk image (no loop mounts); qemu boots it with TCG on 2 vCPUs, the
#    kernel and initrd passed directly, no network device, console on the serial port, into
#    WORKDIR/console.log. The guest powers off when its checks are done.
# Packages come from the Debian mirror this host's apt already uses (or $GSENDER_VM_MIRROR).
# WORKDIR/timing gets one line per phase: "<phase> <seconds>".
set -euo pipefail
base_only=
if [ "${1:-}" = --base ]; then base_only=1; shift; set -- /dev/null "$@"; fi
here=$(cd "$(dirname "$0")" && pwd)
deb=$(realpath "$1")
work=$(realpath -m "$2")
suite=$3
kernel_suite=${4:-}
cache=${GSENDER_VM_CACHE:-/var/cache/gsender-bcc-vm}
boot_timeout=${GSENDER_VM_TIMEOUT:-1200}
base_packages=(systemd systemd-sysv udev dbus linux-image-cloud-amd64
	initramfs-tools kmod procps graphite-carbon python3-whisper bpftool)
# The peer the agreement check runs beside the agent (guest-check.sh: peer): libbpf-tools'
# runqlat where the release packages it, bpftrace where it does not (bullseye).
case $suite in
	bullseye) base_packages+=(bpftrace) ;;
	*) base_packages+=(libbpf-tools) ;;
esac
# What the .deb depends on: downloaded into the base, installed only with the .deb.
agent_dependencies=(python3-bpfcc python3-systemd)
# The container host's runtime (GSENDER_VM_CONTAINERS=1), installed with the .deb.
container_packages=(podman crun conmon uidmap slirp4netns catatonit dbus-user-session
	containernetworking-plugins busybox-static docker.io)
# What a stock host lacks and the .deb must not bring.
forbidden='^(linux-headers-.*|linux-kbuild-.*|linux-compiler-.*|gcc|gcc-[0-9.]+|cpp|cpp-[0-9.]+|make|clang(-[0-9.]+)?)$'
for release in "$suite" $kernel_suite; do
	case $release in
		bullseye | bookworm | trixie) ;;
		*) echo "run-vm.sh: unknown release '$release' (bullseye, bookworm or trixie)" >&2; exit 64 ;;
	esac
done

say() { printf 'vm[%s]: %s\n' "$suite" "$*" >&2; }
phase_started=$SECONDS
phase_done() { echo "$1 $((SECONDS - phase_started))" >> "$work/timing"; phase_started=$SECONDS; }

apt_sources() { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; }
host_mirror() { # the Debian archive this host's apt uses (not the security archive)
	[ -n "${GSENDER_VM_MIRROR:-}" ] && { echo "$GSENDER_VM_MIRROR"; return; }
	apt_sources \
		| awk '/^URIs:/ { print $2 } $1 == "deb" { print ($2 ~ /^\[/ ? $3 : $2) }' \
		| grep -E '/debian/?$' | head -n 1
}
guest_sources() { # the guest's apt sources: the release and its updates (the point releases'
	# kernels; the security archive is not served here)
	echo "deb $1 $suite main"
	echo "deb $1 $suite-updates main"
}

mounted=()
release_mounts() {
	local i
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
	mounted=()
}
trap release_mounts EXIT

in_chroot() { # in_chroot ROOT COMMAND...: run with /proc, /sys and /dev, services kept from starting
	local root=$1; shift
	printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
	chmod +x "$root/usr/sbin/policy-rc.d"
	for fs in proc sys dev dev/pts; do
		case $fs in
			proc) mount -t proc proc "$root/proc" ;;
			sys) mount -t sysfs sys "$root/sys" ;;
			*) mount --bind "/$fs" "$root/$fs" ;;
		esac
		mounted+=("$root/$fs")
	done
	local code=0
	chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
		LANG=C.UTF-8 "$@" || code=$?
	release_mounts
	rm -f "$root/usr/sbin/policy-rc.d"
	return $code
}

installed_forbidden() { # installed_forbidden ROOT: true, naming them, if ROOT has headers or a compiler
	local found
	found=$(chroot "$1" dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" { print $2 }' \
		| grep -E "$forbidden" | tr '\n' ' ')
	[ -n "$found" ] && say "installed: $found"
	[ -n "$found" ]
}

build_base() { # build_base TAR SOURCES
	local root=$work/base mirror
	mirror=$(head -n 1 <<< "$2" | cut -d' ' -f2)
	rm -rf "$root" && mkdir -p "$root"
	say "debootstrap $suite (minbase) from $mirror ..."
	debootstrap --variant=minbase "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
		|| { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
	printf '%s\n' "$2" > "$root/etc/apt/sources.list"
	say "installing ${base_packages[*]} ..."
	in_chroot "$root" sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends \
		${base_packages[*]} > /dev/null && apt-get clean \
		&& apt-get install -y -qq --download-only ${agent_dependencies[*]} > /dev/null" \
		> "$work/base-install.log" 2>&1 || { tail -n 20 "$work/base-install.log" >&2; exit 1; }
	installed_forbidden "$root" && { say "the base image has what a stock host lacks"; exit 1; }
	mkdir -p "$cache"
	tar -C "$root" -cf "$1.tmp" . && mv "$1.tmp" "$1"
	rm -rf "$root"
}

rm -rf "$work" && mkdir -p "$work"
mirror=$(host_mirror)
[ -n "$mirror" ] || { say "no Debian mirror in this host's apt sources (set GSENDER_VM_MIRROR)"; exit 69; }
sources=$(guest_sources "$mirror")
key=$( { printf '%s\n' "$suite" "${base_packages[@]}" "${agent_dependencies[@]}" "$sources"
	declare -f build_base in_chroot; } \
	| sha256sum | cut -c1-16)
base_tar=$cache/base-$suite-$key.tar
if [ -f "$base_tar" ]; then
	say "using the cached base image $base_tar"
	phase_done base-cached
else
	build_base "$base_tar" "$sources"
	phase_done base-built
fi
[ -z "$base_only" ] || { echo "$base_tar"; exit 0; }

root=$work/root
rm -rf "$root" && mkdir -p "$root"
tar -C "$root" -xf "$base_tar"
# The operator guest (GSENDER_VM_OPERATOR=DIR): tests/vm/operator-prepare.sh, not the .deb.
operator=${GSENDER_VM_OPERATOR:-}
if [ -z "$operator" ]; then
cp "$deb" "$root/tmp/gsender-bcc.deb"
say "installing $(basename "$deb") in the guest ..."
chroot "$root" dpkg-query -W -f='${Package}\n' | sort > "$work/packages-before"
in_chroot "$root" apt-get install -y -q /tmp/gsender-bcc.deb \
	> "$work/install.log" 2>&1 || { say "apt-get install of the .deb failed:"; tail -n 20 "$work/install.log" >&2; exit 1; }
rm "$root/tmp/gsender-bcc.deb"
chroot "$root" dpkg-query -W -f='${Package}\n' | sort | comm -13 "$work/packages-before" - \
	> "$work/packages-added"
say "the .deb's install added $(wc -l < "$work/packages-added") packages (listed in $work/packages-added)"
installed_forbidden "$root" && { say "installing the .deb brought what a stock host lacks"; exit 1; }
fi
# The container host (GSENDER_VM_CONTAINERS=1): podman, rootful and rootless, docker.io, and
# busybox-static to make their images from (tests/vm/guest-containers.sh).
if [ -n "${GSENDER_VM_CONTAINERS:-}" ]; then
	say "installing ${container_packages[*]} ..."
	in_chroot "$root" sh -c "apt-get update -qq && apt-get install -y -q --no-install-recommends \
		${container_packages[*]}" > "$work/containers-install.log" 2>&1 \
		|| { tail -n 20 "$work/containers-install.log" >&2; exit 1; }
	installed_forbidden "$root" && { say "installing podman brought what a stock host lacks"; exit 1; }
	# dockerd and containerd start when the container checks begin, not at boot.
	in_chroot "$root" systemctl disable --quiet docker.service docker.socket containerd.service
	install -D -m 0644 "$here/guest-containers.sh" "$root/usr/local/lib/gsender-vm/guest-containers.sh"
fi
if [ -n "$kernel_suite" ]; then
	# The cloud kernel of another release, for which this release has no headers package.
	echo "deb $mirror $kernel_suite main" > "$root/etc/apt/sources.list.d/kernel.list"
	in_chroot "$root" sh -c "apt-get update -qq && apt-cache depends linux-image-cloud-amd64/$kernel_suite" \
		> "$work/kernel-depends" 2>&1 || { cat "$work/kernel-depends" >&2; exit 1; }
	kernel_package=$(awk '/Depends: linux-image-[0-9]/ { print $2; exit }' "$work/kernel-depends")
	[ -n "$kernel_package" ] || { say "no cloud kernel in $kernel_suite"; exit 1; }
	say "installing $kernel_package from $kernel_suite ..."
	in_chroot "$root" apt-get install -y -q --no-install-recommends "$kernel_package" \
		> "$work/kernel-install.log" 2>&1 || { tail -n 20 "$work/kernel-install.log" >&2; exit 1; }
	rm "$root/etc/apt/sources.list.d/kernel.list"
	boot_version=${kernel_package#linux-image-}
	in_chroot "$root" sh -c "apt-get update -qq; apt-cache show linux-headers-$boot_version" \
		> /dev/null 2>&1 && { say "$suite has a headers package for $boot_version"; exit 1; }
fi
[ -n "$operator" ] || in_chroot "$root" sh -c "apt-get clean && rm -rf /var/lib/apt/lists/*"

# The guest: our agent every 2 s to its own carbon-cache on loopback (culprit attribution at
# its default), the check unit, the busy unit.
cat > "$root/etc/gsender.conf" <<'CONF'
[default]
frequency = 2
prefix = vm.cpu-lat

[graphite]
server_address = 127.0.0.1
port = 2003
CONF
{ printf '[gsender]\npattern = ^vm\\.\nretentions = 1s:1h\n\n'; cat "$root/etc/carbon/storage-schemas.conf"; } \
	> "$root/etc/carbon/storage-schemas.conf.new"
mv "$root/etc/carbon/storage-schemas.conf.new" "$root/etc/carbon/storage-schemas.conf"
# carbon drops the datapoints of a new series beyond MAX_CREATES_PER_MINUTE (50): a bucket or a
# service first seen in a busy minute would be missing from the whisper files the checks read.
sed -i 's/^MAX_CREATES_PER_MINUTE *=.*/MAX_CREATES_PER_MINUTE = inf/' "$root/etc/carbon/carbon.conf"
grep -qx 'MAX_CREATES_PER_MINUTE = inf' "$root/etc/carbon/carbon.conf" \
	|| { say "cannot lift carbon's MAX_CREATES_PER_MINUTE"; exit 1; }
[ -f "$root/etc/default/graphite-carbon" ] && \
	sed -i 's/^CARBON_CACHE_ENABLED=.*/CARBON_CACHE_ENABLED=true/' "$root/etc/default/graphite-carbon"
install -m 0755 "$here/guest-check.sh" "$root/usr/local/sbin/gsender-vm-check"
install -m 0755 "$here/guest-busy.sh" "$root/usr/local/sbin/gsender-vm-busy"
install -D -m 0644 "$here/guest_checks.py" "$root/usr/local/lib/gsender-vm/guest_checks.py"
install -m 0644 "$here/../peers.py" "$root/usr/local/lib/gsender-vm/peers.py"
install -m 0644 "$here/gsender-vm-check.service" "$here/gsender-vm-busy.service" \
	"$here/gsender-vm-burn.service" "$root/etc/systemd/system/"
echo gsender-vm > "$root/etc/hostname"
echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" > "$root/etc/fstab"
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
if [ -n "$operator" ]; then
	. "$here/operator-prepare.sh"
else
in_chroot "$root" systemctl enable --quiet carbon-cache.service gsender-vm-check.service
in_chroot "$root" systemctl is-enabled --quiet gsender-bcc.service \
	|| { say "the package did not enable gsender-bcc.service"; exit 1; }
fi
if [ -n "$kernel_suite" ]; then
	kernel=$root/boot/vmlinuz-$boot_version initrd=$root/boot/initrd.img-$boot_version
else
	kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)
	initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -n 1)
fi
cp "$kernel" "$work/vmlinuz" && cp "$initrd" "$work/initrd.img"
size=$(du -sm "$root" | cut -f1)
rm -f "$work/disk.img" && truncate -s $((size + 1024))M "$work/disk.img"
mkfs.ext4 -q -F -L root -d "$root" "$work/disk.img"
rm -rf "$root"
phase_done prepare

say "booting $(basename "$kernel") under qemu (TCG, 2 vCPUs) ..."
code=0
timeout "$boot_timeout" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 -nographic \
	-nic none -no-reboot -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
	-append "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=false" \
	-drive "file=$work/disk.img,format=raw,if=virtio" < /dev/null > "$work/console.log" 2>&1 &
qemu=$!
"$here/watch-console.sh" "$work/console.log" "$qemu" &
watcher=$!
wait "$qemu" || code=$?
wait "$watcher" || true
[ $code -eq 0 ] || say "qemu ended with $code (124 means the $boot_timeout s time limit)"
phase_done boot
rm -f "$work/disk.img"

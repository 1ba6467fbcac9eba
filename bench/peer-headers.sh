#!/usr/bin/env bash
# make bench: kernel headers for one peer only, bcc's runqlat-bpfcc, whose program includes
# <linux/sched.h> (gsender-bcc needs none). Debian has no headers package for this VM's kernel,
# so the distro's generic cloud headers are linked where BCC looks, for the bench's duration.
#
#   peer-headers.sh link     install linux-headers-cloud-<arch> if missing; link build/source
#   peer-headers.sh unlink   remove the links this script made (the package stays)
set -euo pipefail
release=$(uname -r)
modules=/lib/modules/$release
marker=$modules/.gsender-bench-links
say() { printf 'bench: %s\n' "$*"; }
case ${1:-} in
	link)
		[ -e "$modules/build/include" ] && { say "kernel headers for $release are in place"; exit 0; }
		if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				"linux-headers-$release" >/dev/null
			exit 0
		fi
		arch=$(dpkg --print-architecture)
		dpkg-query -W -f='${Status}' "linux-headers-cloud-$arch" 2>/dev/null | grep -q "ok installed" \
			|| DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				"linux-headers-cloud-$arch" >/dev/null
		flavour=$(ls -d /usr/src/linux-headers-*-cloud-"$arch" | sort -V | tail -n 1)
		mkdir -p "$modules"
		ln -sfn "$flavour" "$modules/build"
		ln -sfn "${flavour%-cloud-$arch}-common" "$modules/source"
		touch "$marker"
		say "linked $modules/build -> $flavour for bcc's runqlat (until the bench ends)"
		;;
	unlink)
		[ -e "$marker" ] || exit 0
		rm -f "$modules/build" "$modules/source" "$marker"
		rmdir "$modules" 2>/dev/null || true
		say "removed the kernel header links of $modules"
		;;
	*) echo "usage: peer-headers.sh link|unlink" >&2; exit 64 ;;
esac

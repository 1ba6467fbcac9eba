#!/usr/bin/env bash
# Make this host able to build, run and test gsender-bcc. Safe to run again:
# every step checks first and changes only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-bpfcc python3-systemd python3-venv bpftool gcc make graphite-carbon python3-whisper libbpf-tools
	graphite-web carbon-c-relay tmux)

say() { printf 'setup: %s\n' "$*"; }
need_root() {
	[ "$(id -u)" -eq 0 ] || { echo "setup: $1 needs root: run 'sudo make setup'" >&2; exit 77; }
}

apt_updated=""
apt_install() {
	need_root "installing $*"
	if [ -z "$apt_updated" ]; then
		apt-get update -qq
		apt_updated=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
for pkg in "${APT_PACKAGES[@]}" "$@"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]}"
	apt_install "${missing[@]}"
fi
# Only carbon-c-relay's binary is wanted (the tests run their own relays on loopback); its
# package enables and starts a relay on *:2003 with an empty route table, which would swallow
# what `make run` sends. Stop and disable it, once, when this script installed it.
if [[ " ${missing[*]} " == *" carbon-c-relay "* ]]; then
	if [ -d /run/systemd/system ]; then
		systemctl disable --now carbon-c-relay.service >/dev/null 2>&1 || true
	else
		invoke-rc.d carbon-c-relay stop >/dev/null 2>&1 || true
		update-rc.d carbon-c-relay disable >/dev/null 2>&1 || true
	fi
	say "disabled the carbon-c-relay service (tests start their own relays)"
fi

if [ ! -d /sys/kernel/tracing/events ] && [ ! -d /sys/kernel/debug/tracing/events ]; then
	need_root "mounting tracefs"
	mount -t tracefs nodev /sys/kernel/tracing
	say "mounted tracefs on /sys/kernel/tracing"
fi

# The venv sees the distro's bcc through the system site packages.
stamp=.venv/.installed-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
	say "preparing .venv"
	[ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv
	.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
	rm -f .venv/.installed-*
	touch "$stamp"
fi

#!/usr/bin/env bash
# make install / make uninstall: deploy gsender-bcc from a git checkout, for
# configuration-management tools. Everything installed is listed in a manifest,
# and uninstall removes exactly that list.
#
#   install.sh install     venv in /opt/gsender-bcc, /usr/local/bin/gsender-bcc,
#                          the systemd unit, /etc/gsender.conf if none exists
#   install.sh uninstall   remove those; the configuration only if unchanged
#
# On a host running the original gsender (its gsender.service in /etc/systemd/system), install
# also starts ours and then stops and disables the original (packaging/replace-gsender): one
# agent measures, /etc/gsender.conf is read as is and left unchanged.
# WHEELHOUSE=DIR installs without a package index: graphyte from DIR (`make` puts its sdist in
# build/graphyte), the build with the system's setuptools and wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/opt/gsender-bcc}
BIN=${BIN:-/usr/local/bin/gsender-bcc}
UNIT=${UNIT:-/etc/systemd/system/gsender-bcc.service}
CONF=${CONF:-/etc/gsender.conf}
MANIFEST=$PREFIX/installed-files

say() { printf 'install: %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "install: needs root: run 'sudo make $1'" >&2; exit 77; }
systemd_running() { [ -d /run/systemd/system ]; }

# What the agent needs at run time (and the build, offline); the distro's packages, from apt.
need_packages() {
	local missing=() pkg
	for pkg in "$@"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	say "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install() {
	local pip_source=()
	need_packages python3-bpfcc python3-systemd python3-venv
	if [ -n "${WHEELHOUSE:-}" ]; then
		need_packages python3-setuptools python3-wheel
		pip_source=(--no-index --find-links "$WHEELHOUSE" --no-build-isolation)
	fi
	local our_config=""
	if [ -e "$MANIFEST" ]; then
		say "an earlier install is there: replacing it"
		our_config=$(grep "^$CONF " "$MANIFEST" || true)
		uninstall keep-config
	fi
	mkdir -p "$PREFIX"
	/usr/bin/python3 -m venv --system-site-packages "$PREFIX/venv"
	"$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check "${pip_source[@]}" .
	ln -sfn "$PREFIX/venv/bin/gsender-bcc" "$BIN"
	sed "s|^ExecStart=/usr/bin/gsender-bcc|ExecStart=$BIN|" packaging/gsender-bcc.service > "$UNIT"
	{
		echo "$BIN"
		echo "$UNIT"
	} > "$MANIFEST"
	if [ -n "$our_config" ]; then
		echo "$our_config" >> "$MANIFEST"  # installed by the earlier install, still ours
	elif [ -e "$CONF" ]; then
		say "$CONF exists: left as it is"
	else
		cp packaging/gsender.conf "$CONF"
		echo "$CONF $(sha256sum < "$CONF" | cut -d' ' -f1)" >> "$MANIFEST"
		say "installed the sample configuration as $CONF"
	fi
	systemd_running && systemctl daemon-reload
	if systemd_running && systemctl is-active --quiet gsender.service; then
		say "the original gsender runs here: starting gsender-bcc in its place"
		systemctl enable --quiet --now gsender-bcc.service
		packaging/replace-gsender gsender-bcc.service
		return 0
	fi
	say "done: 'sudo gsender-bcc --check', then 'systemctl enable --now gsender-bcc'"
}

uninstall() {
	[ -e "$MANIFEST" ] || { say "nothing installed at $PREFIX"; return 0; }
	if systemd_running; then
		systemctl disable --now gsender-bcc.service 2>/dev/null || true
	fi
	while read -r path checksum; do
		if [ -n "${checksum:-}" ]; then
			[ "${1:-}" = keep-config ] && continue
			if [ "$(sha256sum < "$path" | cut -d' ' -f1)" != "$checksum" ]; then
				say "$path was changed after install: left in place"
				continue
			fi
		fi
		rm -f "$path"
	done < "$MANIFEST"
	rm -rf "$PREFIX"
	systemd_running && systemctl daemon-reload
	say "removed gsender-bcc from $PREFIX"
}

case "${1:-}" in
	install) install ;;
	uninstall) uninstall ;;
	*) echo "usage: install.sh install|uninstall" >&2; exit 64 ;;
esac

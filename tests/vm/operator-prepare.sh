# Sourced by run-vm.sh for the operator guest (GSENDER_VM_OPERATOR=DIR): instead of our .deb
# installed and the check unit, a host running the original gsender (a stand-in, old-gsender/)
# that guest-operator.sh replaces, upgrades and removes. DIR holds older.deb and newer.deb (one
# tree at two package versions), src/ (the source tree, for `make install`) and wheelhouse/
# (graphyte's sdist: the guest has no network). Also added: bpftrace, make, python3-venv,
# python3-setuptools and python3-wheel, what the original and a `make install` need; apt's lists
# and the downloaded dependencies of the .deb stay, so that apt works offline.
say "the operator guest: bpftrace, make and the original gsender's stand-in ..."
in_chroot "$root" sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	bpftrace make python3-venv python3-setuptools python3-wheel > /dev/null \
	&& apt-get install -y -qq --download-only ${agent_dependencies[*]} > /dev/null" \
	> "$work/operator-install.log" 2>&1 || { tail -n 20 "$work/operator-install.log" >&2; exit 1; }
install -D -m 0755 "$here/old-gsender/gsender-standin" "$root/opt/gsender/gsender-standin"
install -m 0644 "$here/old-gsender/gsender.service" "$root/etc/systemd/system/gsender.service"
install -m 0644 "$here/old-gsender/gsender.conf" "$root/etc/gsender.conf"
mkdir -p "$root/root/operator"
cp -r "$operator"/. "$root/root/operator/"
cp "$here/old-gsender/gsender.conf" "$root/root/operator/gsender.conf"
install -m 0755 "$here/guest-operator.sh" "$root/usr/local/sbin/gsender-vm-operator"
install -m 0644 "$here/gsender-vm-operator.service" "$root/etc/systemd/system/"
# <short host>.cpu-lat is vm.cpu-lat, the series carbon keeps at 1 s here.
echo vm > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvm\n::1\tlocalhost ip6-localhost\n' > "$root/etc/hosts"
in_chroot "$root" systemctl enable --quiet carbon-cache.service gsender.service gsender-vm-operator.service

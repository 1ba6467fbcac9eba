# Sourced by gsender-vm-check in the guest that has podman and docker (run-vm.sh
# GSENDER_VM_CONTAINERS=1): containers and Kubernetes pods named by the running agent. Uses
# guest-check.sh's helpers.
#   containers-podman     two named rootful containers burning CPU: their series carry their names
#   containers-podman-restart   `podman restart`: the same series go on
#   containers-podman-recreate  `podman rm` + `run` with the same name (a new id): the same series
#   containers-docker, containers-docker-restart, containers-docker-recreate: the same with
#                         docker.io (dockerd started here, without networking)
#   containers-rootless   a rootless container of a user with a delegated slice, the unit as
#                         packaged (no drop-in): user-<uid>_podman_<name>
#   containers-adversarial  docker containers named nginx and root: in docker's names, no nginx
#                         series, at most one warning from the agent
#   containers-k8s        the kubelet's layout built by hand (cgroups under kubepods.slice,
#                         /var/log/pods, /var/log/containers with a symlink loop), processes
#                         in it: k8s_<namespace>_<workload>_<container> and ..._POD
#   containers-files      docker containers built by hand with a 50 MB and a malformed
#                         config.v2.json: named by their short ids, at most one warning, the
#                         names in the files unused, the agent not restarted
# Each waits for the samples of the services it expects since its step began, and fails on any
# other series named after a container's id that counted samples since then.
loop='while :; do :; done'
image=localhost/gsender-vm-busybox
named_since() { # named_since NAME T SERVICE...: one check, waiting up to 60 s for it to pass
	local name=$1 since=$2; shift 2
	wait_for 60 helper named "$whisper_dir" --since "$since" --service "$*" --name "$name" > /dev/null
	helper named "$whisper_dir" --since "$since" --service "$*" --name "$name" > "$out"
}
podman_as() { # podman_as USER ARGS...: podman as USER (root: as is), its errors on the console
	# (ctl=docker: docker, as root)
	local user=$1; shift
	if [ "$user" = root ]; then
		timeout 300 "${ctl:-podman}" "$@" 2> /root/vm-podman.err
	else
		timeout 300 runuser -u "$user" -- env XDG_RUNTIME_DIR="/run/user/$(id -u "$user")" \
			DBUS_SESSION_BUS_ADDRESS="unix:path=/run/user/$(id -u "$user")/bus" \
			sh -c 'cd && exec podman "$@"' podman "$@" 2> /root/vm-podman.err
	fi || { log_text "${ctl:-podman} $*" "$(cat /root/vm-podman.err)"; return 1; }
}
import_busybox() { # import_busybox USER: the image, from a tarball of busybox-static made here
	local tree
	tree=$(mktemp -d)
	mkdir -p "$tree/bin" && cp /bin/busybox "$tree/bin/busybox" && ln -s busybox "$tree/bin/sh"
	tar -C "$tree" -cf /tmp/gsender-vm-busybox.tar . && chmod 0644 /tmp/gsender-vm-busybox.tar
	rm -rf "$tree"
	podman_as "$1" import /tmp/gsender-vm-busybox.tar "$image" > /dev/null
}
burn() { # burn USER NAME: a container named NAME burning CPU (docker: no AppArmor profile, as
	# the guest has no apparmor_parser to load docker's with)
	podman_as "$1" run -d --name "$2" --network none \
		$([ "${ctl:-podman}" = docker ] && echo --security-opt apparmor=unconfined) \
		"$image" /bin/busybox sh -c "$loop" > /dev/null
}

# The unit as packaged, without a drop-in: it reads a rootless user's store under its home
# (man page, CONTAINER NAMES).
systemctl reset-failed "$unit" 2>/dev/null
agent_started=$(date +%s)
timeout 300 systemctl start "$unit"
wait_for 150 systemctl is-active --quiet "$unit" || log_tail

rootful() { # rootful RUNTIME CHECK-PREFIX: two named containers, a restart, a re-creation
	local ctl=$1 step rm_time=
	[ "$ctl" = podman ] && rm_time="-t 1"  # docker rm -f kills at once; podman waits 10 s
	step=$(date +%s)
	import_busybox root && burn root burn1 && burn root burn2
	named_since "$2" "$step" "${1}_burn1" "${1}_burn2"
	step=$(date +%s)
	podman_as root restart -t 1 burn1 > /dev/null
	named_since "$2-restart" "$step" "${1}_burn1"
	podman_as root rm -f $rm_time burn1 > /dev/null
	# Only intervals that began after the removal (at most 3 s long) count: the new burn1's.
	step=$(( $(date +%s) + 4 ))
	burn root burn1
	named_since "$2-recreate" "$step" "${1}_burn1" "${1}_burn2"
	podman_as root rm -f $rm_time burn1 burn2 > /dev/null
}
rootful podman containers-podman
# docker.io: its daemons are kept from starting at boot (run-vm.sh); no bridge, no iptables.
mkdir -p /etc/docker
printf '{"bridge": "none", "iptables": false, "ip6tables": false}\n' > /etc/docker/daemon.json
timeout 300 systemctl start containerd.service docker.service \
	|| log_text "dockerd" "$(journalctl -u docker.service -n 20 --no-pager -o cat)"
rootful docker containers-docker

# Rootless: a user whose user@.service systemd starts at boot (lingering), so its slice is
# delegated to it; podman puts the container in a scope below it.
useradd -m -u 1000 -s /bin/sh tester
loginctl enable-linger tester
wait_for 60 test -S /run/user/1000/bus
step=$(date +%s)
import_busybox tester && burn tester rburn
drop_ins=$(prop DropInPaths | tr ' ' '\n' | grep gsender)
if [ -z "$drop_ins" ]; then
	named_since containers-rootless "$step" user-1000_podman_rburn
else
	check containers-rootless 1 "the unit is not as packaged: drop-ins $drop_ins"
fi
podman_as tester rm -f -t 1 rburn > /dev/null

# Adversarial names: docker containers named nginx and root stay in docker's names; the guest
# has no nginx unit, so any nginx series would be a crossing. The agent starts afresh, so that
# its warnings since then are these containers'.
agent_started=$(date +%s)
timeout 300 systemctl restart "$unit"
wait_for 150 systemctl is-active --quiet "$unit" || log_tail
step=$(date +%s)
ctl=docker burn root nginx && ctl=docker burn root root
wait_for 60 helper named "$whisper_dir" --since "$step" --service "docker_nginx docker_root" > /dev/null
said=$(helper named "$whisper_dir" --since "$step" --name containers-adversarial \
	--service "docker_nginx docker_root")
ok=$?
crossed=$( (ls -d "$whisper_dir/service/nginx" 2>/dev/null; ls "$whisper_dir/service" \
	| grep -v '^[A-Za-z0-9_-]*$') | tr '\n' ' ')
# The containers module's warnings say "named by their short id".
warnings=$(journalctl -u "$unit" --since "@$agent_started" -o cat | grep -c 'short id\|Traceback')
[ $ok -eq 0 ] && [ -z "$crossed" ] && [ "$warnings" -le 1 ] && systemctl is-active --quiet "$unit"
check containers-adversarial $? "${said#VMCHECK containers-adversarial [A-Z]* }; crossed: ${crossed:-none}; agent warnings: $warnings; agent $(prop ActiveState)"
ctl=docker podman_as root rm -f nginx root > /dev/null
timeout 120 systemctl stop docker.socket docker.service containerd.service

# Kubernetes, by hand: a pod of the Deployment web in namespace shop, its pause container and
# its nginx container (both busy loops), under the systemd driver's slices.
uid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0
pod=web-7d4b9c8f6d-x2x9k
pause_id=$(printf 'a%.0s' $(seq 64)); nginx_id=$(printf 'b%.0s' $(seq 64))
slice=/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${uid//-/_}.slice
mkdir -p "$slice/cri-containerd-$pause_id.scope" "$slice/cri-containerd-$nginx_id.scope" \
	"/var/log/pods/shop_${pod}_$uid/nginx" /var/log/containers
echo "2026-12-07T01:00:00Z stdout F started" > "/var/log/pods/shop_${pod}_$uid/nginx/0.log"
ln -sf "/var/log/pods/shop_${pod}_$uid/nginx/0.log" \
	"/var/log/containers/${pod}_shop_nginx-$nginx_id.log"
# A symlink loop among the kubelet's links, named like one of them, and a directory loop.
ln -sf "loop_shop_b-$pause_id.log" "/var/log/containers/loop_shop_a-$pause_id.log"
ln -sf "loop_shop_a-$pause_id.log" "/var/log/containers/loop_shop_b-$pause_id.log"
ln -sfn /var/log/containers /var/log/containers/self
k8s_pids=
for scope in "cri-containerd-$pause_id.scope" "cri-containerd-$nginx_id.scope"; do
	sh -c 'echo $$ > "$1/cgroup.procs" && exec sh -c "$2"' sh "$slice/$scope" "$loop" &
	k8s_pids="$k8s_pids $!"
done
step=$(date +%s)
named_since containers-k8s "$step" k8s_shop_web_nginx k8s_shop_web_POD
kill $k8s_pids; wait $k8s_pids 2>/dev/null
rmdir "$slice"/*.scope "$slice" "${slice%/*}" "${slice%/*/*}" 2>/dev/null

# Adversarial files: two busy containers of docker's cgroupfs layout (/docker/<id>), built by
# hand while dockerd is stopped, whose config.v2.json is 50 MB (valid JSON naming burn1) or
# malformed (naming burn2 before it breaks off). Each is named by its short id, at most one
# warning, and burn1's and burn2's series stay empty.
big_id=$(printf 'c%.0s' $(seq 64)); bad_id=$(printf 'd%.0s' $(seq 64))
configs=/var/lib/docker/containers
mkdir -p "$configs/$big_id" "$configs/$bad_id"
{ printf '{"Name": "/burn1"'; head -c 52428800 /dev/zero | tr '\0' ' '; printf '}'; } \
	> "$configs/$big_id/config.v2.json"
printf '{"Name": "/burn2", "State": {"Running": tr' > "$configs/$bad_id/config.v2.json"
restarts=$(prop NRestarts)
step=$(date +%s)
files_pids=
for id in "$big_id" "$bad_id"; do
	mkdir -p "/sys/fs/cgroup/docker/$id"
	sh -c 'echo $$ > "$1/cgroup.procs" && exec sh -c "$2"' sh "/sys/fs/cgroup/docker/$id" "$loop" &
	files_pids="$files_pids $!"
done
files_named() { helper named "$whisper_dir" --since "$step" --absent "docker_burn1 docker_burn2" \
	--service "docker_${big_id:0:12} docker_${bad_id:0:12}" "$@"; }
wait_for 60 files_named > /dev/null
said=$(files_named --name containers-files)
ok=$?
warnings=$(journalctl -u "$unit" --since "@$step" -o cat | grep -c 'short id\|Traceback')
[ $ok -eq 0 ] && [ "$warnings" -le 1 ] && [ "$(prop NRestarts)" = "$restarts" ] \
	&& systemctl is-active --quiet "$unit"
check containers-files $? "${said#VMCHECK containers-files [A-Z]* }; agent warnings: $warnings; restarts $restarts -> $(prop NRestarts); agent $(prop ActiveState)"
kill $files_pids; wait $files_pids 2>/dev/null
rmdir "/sys/fs/cgroup/docker/$big_id" "/sys/fs/cgroup/docker/$bad_id" /sys/fs/cgroup/docker 2>/dev/null
rm -r "${configs:?}/$big_id" "${configs:?}/$bad_id"

timeout 30 systemctl stop "$unit"

#!/bin/bash
# Runs once inside the operator guest (gsender-vm-operator.service): the operator's day on one
# boot. The guest boots running a stand-in of the original gsender (old-gsender/: its unit in
# /etc/systemd/system, Debian's runqlat.bt under bpftrace) with the original's /etc/gsender.conf.
#  1a. `apt-get install` of our .deb replaces it: ours runs, the original's unit is stopped and
#      disabled, one agent traces, the configuration is byte for byte the operator's,
#      <host>.cpu-lat.count has no hole across the switch.
#  2.  With carbon stopped, the newer .deb over the running older one: one restart, the edited
#      configuration kept, every interval arrives once carbon is back; `apt-get remove` keeps the
#      configuration and the outbox, a new install sends it; purge removes both.
#  1b. The way back the README gives brings the original back; `make install` from the source
#      tree (offline: WHEELHOUSE) replaces it, with the checks of 1a.
# Each check prints "VMCHECK <name> PASS|FAIL <detail>" on the serial console; then power off.
set -u
out=/dev/ttyS0
ours=gsender-bcc.service
old=gsender.service
ops=/root/operator
whisper_dir=/var/lib/graphite/whisper/vm/cpu-lat
f=2  # the frequency of the original's configuration (old-gsender/gsender.conf)
export DEBIAN_FRONTEND=noninteractive
# These few helpers stand in guest-check.sh too, on purpose: each script is the whole of its
# guest's boot, copied in alone, and reads top to bottom on the serial console's report.
helper() { timeout 300 /usr/bin/python3 /usr/local/lib/gsender-vm/guest_checks.py "$@"; }
say() { echo "$*" > "$out"; }
check() { # check NAME OK(0|1) DETAIL
	if [ "$2" -eq 0 ]; then say "VMCHECK $1 PASS $3"; else say "VMCHECK $1 FAIL $3"; fi
}
prop() { timeout 60 systemctl show -p "$1" --value "${2:-$ours}"; }
wait_for() { # wait_for SECONDS COMMAND...: true once COMMAND succeeds
	local deadline=$((SECONDS + $1)); shift
	until "$@"; do [ $SECONDS -ge $deadline ] && return 1; sleep 1; done
}
one_line() { tr '\n' ' ' <<< "$1" | sed 's/  */ /g; s/ $//' | cut -c1-400; }
log_text() { sed "s/^/VMLOG $1: /" <<< "$2" | tail -n 40 > "$out"; }
log_units() { journalctl -u "$ours" -u "$old" -n 25 --no-pager -o cat | sed 's/^/VMLOG journal: /' > "$out"; }

conf_sum() { sha256sum < /etc/gsender.conf 2>/dev/null | cut -d' ' -f1; }
seed_sum=$(sha256sum < "$ops/gsender.conf" | cut -d' ' -f1)
delivered_since() { [ -n "$(helper stamps "$whisper_dir" --since "$(($1 - 1))")" ]; }  # a stamp >= $1
old_delivering() { delivered_since $(($(date +%s) - 3 * f)); }
last_interval() { prop StatusText | sed -n 's/^last interval ending \([0-9]*\):.*/\1/p'; }
measured_past() { local s; s=$(last_interval); [ -n "$s" ] && [ "$s" -ge "$1" ]; }
outbox_lines() { cat /var/lib/gsender-bcc/outbox/* 2>/dev/null | wc -l; }
epoch_of() { date -d "$(prop "$1" "$2")" +%s; }  # epoch_of PROPERTY UNIT: a timestamp of systemd's
# The stamps of every interval the agent measured, as its journal says (logging_level INFO).
measured_stamps() { journalctl -u "$ours" -o cat | sed -n 's/.*interval ending \([0-9]*\):.*/\1/p' | tr '\n' ' '; }
arrived() {
	helper arrived "$whisper_dir" --frequency $f --from "$1" --until "$2" --measured "$(measured_stamps)" \
		--name "${3:-arrived}"
}

( while sleep 60; do
	say "VMLOG operator script at ${SECONDS}s, running: $(ps -o pid=,etimes=,args= --ppid $$ \
		| grep -v ' sleep 60$' | tr '\n' ';' | cut -c1-300)"
done ) &
progress_reporter=$!

. /etc/os-release
say "VMCHECK-START uptime $(cut -d' ' -f1 /proc/uptime)s release ${VERSION_CODENAME:-unknown} kernel $(uname -r)" \
	"bpftrace $(dpkg-query -W -f='${Version}' bpftrace) systemd $(dpkg-query -W -f='${Version}' systemd)"

# The checks after one install path (NAME: install or deb) that exited CODE.
handover() {
	local name=$1 code=$2 state enabled tracers agents switch_from end
	systemctl is-active --quiet "$ours"
	check "$name-ours-running" $? "exit $code; $ours $(prop ActiveState), status: $(prop StatusText | cut -c1-100)"
	state=$(prop ActiveState "$old"); enabled=$(systemctl is-enabled "$old" 2>&1)
	[ "$state" = inactive ] && [ "$enabled" = disabled ] && [ -e "/etc/systemd/system/$old" ]
	check "$name-old-stopped" $? "$old: $state, $enabled; its unit file is left in place"
	tracers=$(pgrep -xc bpftrace); agents=$(pgrep -fc 'bin/gsender-bcc$')
	[ "$tracers" = 0 ] && [ "$agents" = 1 ]
	check "$name-one-agent" $? "bpftrace processes: $tracers, gsender-bcc agents: $agents"
	[ "$(conf_sum)" = "$seed_sum" ]
	check "$name-conf-unchanged" $? "/etc/gsender.conf sha256 $(conf_sum), the operator's $seed_sum"
	# Across the switch: from three intervals before ours started until at least two after the
	# original stopped (both as systemd recorded them).
	switch_from=$(( $(epoch_of ActiveEnterTimestamp "$ours") - 3 * f ))
	end=$(( ($(epoch_of InactiveEnterTimestamp "$old") / f + 3) * f ))
	wait_for 60 delivered_since "$end"
	helper continuity "$whisper_dir" --frequency $f --from "$switch_from" --until "$end" \
		--name "$name-continuity" > "$out"
}

# ---- the original gsender, as the host runs it ---------------------------------------------
wait_for 300 old_delivering
ok=$?
check old-running $ok "$old $(prop ActiveState "$old"), bpftrace processes: $(pgrep -xc bpftrace), datapoints in the last $((3 * f))s: $([ $ok -eq 0 ] && echo yes || echo no)"
[ $ok -eq 0 ] || log_units

# ---- 1a. the .deb, as an operator installs it (no flags; a conffile prompt would fail) ------
said=$(timeout 900 apt-get install -y -q "$ops/older.deb" < /dev/null 2>&1); code=$?
[ $code -eq 0 ] && ! grep -q "Configuration file '/etc/gsender.conf'" <<< "$said"
check deb-no-prompt $? "apt-get install exit $code; $(grep -o "gsender-bcc: stopped and disabled[^(]*" <<< "$said")"
[ $code -eq 0 ] || log_text "apt-get install" "$said"
handover deb $code

# ---- 2. the newer .deb over the running older one, carbon away -------------------------------
echo "# edited by the operator" >> /etc/gsender.conf
edited_sum=$(conf_sum)
now=$(date +%s)
wait_for 60 delivered_since "$now"
systemctl stop carbon-cache
down=$(date +%s)
wait_for 60 measured_past $((down + 2 * f))  # two intervals waiting in the outbox
waiting=$(outbox_lines)
pid_before=$(prop MainPID)
upgrade_started=$(date +%s)
said=$(timeout 900 apt-get install -y -q -o Dpkg::Options::=--force-confold "$ops/newer.deb" < /dev/null 2>&1); code=$?
[ $code -eq 0 ] || log_text "apt-get install (upgrade)" "$said"
version=$(dpkg-query -W -f='${Version}' gsender-bcc)
[ $code -eq 0 ] && [ "$version" = "$(dpkg-deb -f "$ops/newer.deb" Version)" ]
check upgrade-version $? "apt-get install exit $code; installed $version"
wait_for 120 measured_past $(( ($(date +%s) / f + 2) * f ))
starts=$(journalctl -u "$ours" --since "@$upgrade_started" -o cat | grep -c '^Started ')
stops=$(journalctl -u "$ours" --since "@$upgrade_started" -o cat | grep -c '^Stopped ')
[ "$starts" = 1 ] && [ "$stops" = 1 ] && [ "$(prop MainPID)" != "$pid_before" ] \
	&& systemctl is-active --quiet "$ours"
check upgrade-restarted-once $? "since the upgrade began: $starts start(s), $stops stop(s); MainPID $pid_before -> $(prop MainPID)"
[ "$(conf_sum)" = "$edited_sum" ] && ! grep -q "Configuration file '/etc/gsender.conf'" <<< "$said"
check upgrade-conf-kept $? "/etc/gsender.conf sha256 $(conf_sum), as edited $edited_sum"
after=$(last_interval)
[ "$waiting" -gt 0 ] && ! delivered_since $((down + 1))
check upgrade-outbox-waiting $? "carbon stopped at $down: $waiting outbox lines before the upgrade, none delivered since, last interval measured $after"
systemctl start carbon-cache
until_stamp=$(( ($(date +%s) / f + 2) * f ))
wait_for 240 arrived $((down + 1)) "$until_stamp" > /dev/null
arrived $((down + 1)) "$until_stamp" upgrade-all-arrived > "$out"

# ---- apt-get remove keeps the configuration and the outbox; a new install sends it ----------
now=$(date +%s)
wait_for 60 delivered_since "$now"
systemctl stop carbon-cache
down=$(date +%s)
wait_for 60 measured_past $((down + 2 * f))
said=$(timeout 600 apt-get remove -y -q gsender-bcc < /dev/null 2>&1); code=$?
last_measured=$(measured_stamps | tr ' ' '\n' | grep . | tail -n 1)
status=$(dpkg-query -W -f='${db:Status-Abbrev}' gsender-bcc 2>&1)
waiting=$(outbox_lines)
[ $code -eq 0 ] && [ "$status" = "rc " ] && [ "$(conf_sum)" = "$edited_sum" ] && [ "$waiting" -gt 0 ] \
	&& ! systemctl is-active --quiet "$ours"
check remove-kept $? "apt-get remove exit $code, status '$status', $ours $(prop ActiveState); /etc/gsender.conf as edited: $([ "$(conf_sum)" = "$edited_sum" ] && echo yes || echo no); outbox: $waiting lines; last interval measured $last_measured"
[ $code -eq 0 ] || log_text "apt-get remove" "$said"
systemctl start carbon-cache
said=$(timeout 900 apt-get install -y -q -o Dpkg::Options::=--force-confold "$ops/newer.deb" < /dev/null 2>&1); code=$?
[ $code -eq 0 ] || log_text "apt-get install (after remove)" "$said"
wait_for 240 arrived $((down + 1)) "${last_measured:-0}" > /dev/null
said=$(arrived $((down + 1)) "${last_measured:-0}" remove-resumed)
systemctl is-active --quiet "$ours" && grep -q ' PASS ' <<< "$said"
check remove-resumed $? "reinstalled (exit $code), $ours $(prop ActiveState): ${said#VMCHECK remove-resumed [A-Z]* }"

# ---- purge removes both ---------------------------------------------------------------------
said=$(timeout 600 apt-get purge -y -q gsender-bcc < /dev/null 2>&1); code=$?
left=$(ls -d /etc/gsender.conf /var/lib/gsender-bcc /var/lib/private/gsender-bcc 2>/dev/null | tr '\n' ' ')
[ $code -eq 0 ] && [ -z "$left" ] && ! dpkg-query -W -f='${Status}' gsender-bcc 2>/dev/null | grep -q installed
check purge-removed $? "apt-get purge exit $code; left behind: ${left:-nothing}"
[ $code -eq 0 ] || log_text "apt-get purge" "$said"

# ---- 1b. back to the original (the README's way back), then make install, offline ----------
cp "$ops/gsender.conf" /etc/gsender.conf  # what purge removed, as the operator's tools put it back
systemctl enable --quiet --now "$old"
back=$(date +%s)
wait_for 300 delivered_since $((back + f))
ok=$?
[ $ok -eq 0 ] && systemctl is-active --quiet "$old" && ! systemctl is-active --quiet "$ours"
check rollback $? "after purge, systemctl enable --now $old: $old $(prop ActiveState "$old"), $ours $(prop ActiveState), datapoints again: $([ $ok -eq 0 ] && echo yes || echo no)"
said=$(cd "$ops/src" && WHEELHOUSE="$ops/wheelhouse" timeout 1200 make install 2>&1); code=$?
[ $code -eq 0 ] || log_text "make install" "$said"
handover install $code

log_units
kill "$progress_reporter" 2>/dev/null
say "VMCHECK-DONE uptime $(cut -d' ' -f1 /proc/uptime)s"
systemctl poweroff --no-block

#!/bin/bash
# Runs once inside the test VM (gsender-vm-check.service), against the real
# gsender-bcc service installed from our .deb. Each check prints one line,
#   VMCHECK <name> PASS|FAIL <detail>
# on the serial console, which the host parses; then the VM powers off.
set -u
out=/dev/ttyS0
unit=gsender-bcc.service
say() { echo "$*" > "$out"; }
check() { # check NAME OK(0|1) DETAIL
	if [ "$2" -eq 0 ]; then say "VMCHECK $1 PASS $3"; else say "VMCHECK $1 FAIL $3"; fi
}
prop() { systemctl show -p "$1" --value "$unit"; }
wait_for() { # wait_for SECONDS COMMAND...: true once COMMAND succeeds
	local deadline=$((SECONDS + $1)); shift
	until "$@"; do [ $SECONDS -ge $deadline ] && return 1; sleep 1; done
}
last_value() { # last_value SERIES: the newest non-null value of a whisper series
	whisper-fetch --from=$(( $(date +%s) - 600 )) "/var/lib/graphite/whisper/vm/cpu-lat/$1.wsp" \
		2>/dev/null | awk '$2 != "None" { v = $2 } END { if (v != "") print v; else exit 1 }'
}
log_tail() { journalctl -u "$unit" -n 15 --no-pager -o cat | sed 's/^/VMLOG /' > "$out"; }

say "VMCHECK-START kernel $(uname -r)"

wait_for 180 systemctl is-active --quiet "$unit"
ok=$?
check active $ok "$(prop ActiveState)/$(prop SubState) after boot"
[ $ok -eq 0 ] || log_tail

status=$(prop StatusText)
[ "$(prop Type)" = notify ] && [ "$(prop ActiveState)" = active ] && [ -n "$status" ]
check ready $? "Type=$(prop Type), status: $status"

check no-restarts "$(( $(prop NRestarts) != 0 ))" "NRestarts=$(prop NRestarts)"

wait_for 180 last_value count >/dev/null
count=$(last_value count || echo none)
mean=$(last_value mean || echo none)
awk -v c="$count" -v m="$mean" 'BEGIN { exit !(c > 0 && m > 0 && m < 1000000) }'
check series-arrived $? "count=$count mean=${mean}us in the guest's whisper files"

pid=$(prop MainPID)
sed -i 's/^frequency = .*/frequency = 3/' /etc/gsender.conf
systemctl reload "$unit"
wait_for 30 sh -c "journalctl -u $unit -o cat | grep -q 'configuration reloaded: frequency 3s'"
ok=$?
[ "$(prop MainPID)" = "$pid" ] || ok=1
check reload $ok "MainPID $pid -> $(prop MainPID), $(journalctl -u $unit -o cat | grep -c 'configuration reloaded') reload(s) logged"

score=$(systemd-analyze security "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 3.0) }'
check security-score $? "exposure ${score:-unknown} (target <= 3.0)"

systemctl stop "$unit"
result="$(prop Result) ExecMainStatus=$(prop ExecMainStatus)"
sleep 3
left=$(bpftool prog show 2>/dev/null | grep -c "raw_tracepoint\|tracepoint" || true)
[ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ] && [ "$left" -eq 0 ]
check clean-stop $? "$result, $left BPF programs left attached"

cp /etc/gsender.conf /root/gsender.conf.good
printf '[default]\nfrequency = often\n' > /etc/gsender.conf
systemctl reset-failed "$unit" 2>/dev/null
systemctl start "$unit"
sleep 12  # longer than RestartSec: a restart loop would show by now
code=$(prop ExecMainStatus); state=$(prop ActiveState); restarts=$(prop NRestarts)
[ "$code" = 78 ] && [ "$state" = failed ] && [ "$restarts" = 0 ]
check config-error $? "ExecMainStatus=$code ActiveState=$state NRestarts=$restarts"
journalctl -u "$unit" -o cat | grep -q "gsender-bcc: /etc/gsender.conf: \[default\] frequency = 'often'"
check config-error-message $? "$(journalctl -u $unit -o cat | grep 'frequency =' | tail -n 1)"
cp /root/gsender.conf.good /etc/gsender.conf

DEBIAN_FRONTEND=noninteractive apt-get purge -y -q gsender-bcc > /dev/null 2>&1
left=""
for path in /etc/gsender.conf /usr/bin/gsender-bcc /lib/systemd/system/gsender-bcc.service \
		/var/lib/gsender-bcc /usr/lib/python3/dist-packages/gsender_bcc /usr/share/doc/gsender-bcc; do
	[ -e "$path" ] && left="$left $path"
done
dpkg-query -W -f='${Status}' gsender-bcc 2>/dev/null | grep -q "ok installed" && left="$left (package)"
[ -z "$left" ]
check purge $? "left behind:${left:- nothing}"

log_tail
say "VMCHECK-DONE"
systemctl poweroff --no-block

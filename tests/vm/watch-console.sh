#!/usr/bin/env bash
# watch-console.sh CONSOLE PID: end PID (the guest's qemu) once CONSOLE shows the guest's kernel
# stuck for good in its own text patching: a soft lockup whose report reaches text_poke_bp
# (tests/test_vm.py, emulated_patching_crash). Such a guest otherwise sits until its time limit.
# Looks every second; returns within a second of PID's end.
console=$1 pid=$2
while kill -0 "$pid" 2> /dev/null; do
	if sed -n '/BUG: soft lockup/,$p' "$console" 2> /dev/null | grep -q text_poke_bp; then
		sleep 3 # the rest of the kernel's report
		echo "watch-console.sh: the guest's kernel is stuck patching its own code; ending qemu" >&2
		kill "$pid" 2> /dev/null
		exit 0
	fi
	sleep 1
done

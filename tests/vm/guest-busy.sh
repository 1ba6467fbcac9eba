#!/bin/sh
# The busy unit (gsender-vm-busy.service): processes that never sleep, all pinned to the
# unit's one CPU (CPUAffinity=), so each waits in the run queue while another runs.
spin() { while :; do :; done; }
for _ in $(seq "${1:-8}"); do spin & done
wait

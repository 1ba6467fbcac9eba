/*
 * Run-queue latency: time from a task becoming runnable until it is switched in.
 *
 * Compile-time settings (given as -D flags by gsender_bcc.probe):
 *   PREEMPTED_STATE  the prev_state bit sched_switch reports for a preempted task
 *   START_ENTRIES    capacity of the map of enqueue timestamps
 *
 * Counters are per CPU, cumulative and never cleared: user space sums the CPUs
 * and takes differences between reads.
 */
#include "runqlat.h"

_Static_assert(HIST_SLOTS == (HIST_LOG2_MAX - HIST_SUB_BITS + 1) * HIST_SUB_COUNT + 1,
	       "HIST_SLOTS does not match the layout constants");
_Static_assert(HIST_SUB_COUNT == 1 << HIST_SUB_BITS, "HIST_SUB_COUNT must be 2^HIST_SUB_BITS");

/*
 * pid -> time it became runnable (ns), 0 once consumed. Entries are updated in
 * place, so the steady state costs one lookup per event and no locks; the LRU
 * policy retires the entries of threads that have exited.
 */
BPF_TABLE("lru_hash", u32, u64, enqueued_at, START_ENTRIES);
BPF_PERCPU_ARRAY(stats, struct latency_stats, 1);

static inline void mark_runnable(u32 pid, u64 now)
{
	u64 *ts;

	if (pid == 0)
		return;
	ts = enqueued_at.lookup(&pid);
	if (ts) {
		*ts = now;
		return;
	}
	if (enqueued_at.update(&pid, &now) != 0) {
		u32 zero = 0;
		struct latency_stats *s = stats.lookup(&zero);

		if (s)
			s->lost++;
	}
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
	mark_runnable(args->pid, bpf_ktime_get_ns());
	return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
	mark_runnable(args->pid, bpf_ktime_get_ns());
	return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
	u64 now = bpf_ktime_get_ns();
	u32 next = args->next_pid;
	long state = args->prev_state;
	u64 *ts, delta;
	u32 zero = 0;
	struct latency_stats *s;

	if (state == 0 || (state & PREEMPTED_STATE))
		mark_runnable(args->prev_pid, now);

	if (next == 0)
		return 0;
	ts = enqueued_at.lookup(&next);
	if (!ts || *ts == 0 || *ts > now)
		return 0;
	delta = now - *ts;
	*ts = 0;

	s = stats.lookup(&zero);
	if (!s)
		return 0;
	u64 slot = latency_slot(delta / 1000);
	/* Hide the known range from the compiler so the clamp the verifier needs stays. */
	asm volatile("" : "+r"(slot));
	if (slot >= HIST_SLOTS)
		slot = HIST_SLOTS - 1;
	s->slots[slot]++;
	s->sum_ns += delta;
	return 0;
}

/*
 * Run-queue latency: time from a task becoming runnable until it is switched in.
 *
 * Two ways to attach, chosen by gsender_bcc.program and given as -D flags:
 *
 * RAW_TRACEPOINTS (when the kernel's BTF describes the layout): the cheaper raw
 * tracepoints, whose arguments are task_struct pointers. Tasks are keyed by
 * pointer; the one field read, the pid (to leave out the idle task), is read at
 * TASK_PID_OFFSET. sched_switch passes prev_state since Linux 5.18
 * (SWITCH_HAS_PREV_STATE=1); before, it is read at TASK_STATE_OFFSET
 * (TASK_STATE_SIZE bytes). A preempted task is flagged by the preempt argument.
 *
 * Otherwise classic tracepoints, whose fields come from tracefs: tasks are keyed
 * by pid, and a preempted task shows the PREEMPTED_STATE bit in prev_state.
 *
 * START_ENTRIES sizes the map of enqueue timestamps.
 *
 * Counters are per CPU, cumulative and never cleared: user space sums the CPUs
 * and takes differences between reads.
 */
#include "runqlat.h"

_Static_assert(HIST_SLOTS == (HIST_LOG2_MAX - HIST_SUB_BITS + 1) * HIST_SUB_COUNT + 1,
	       "HIST_SLOTS does not match the layout constants");
_Static_assert(HIST_SUB_COUNT == 1 << HIST_SUB_BITS, "HIST_SUB_COUNT must be 2^HIST_SUB_BITS");

/*
 * task -> time it became runnable (ns), 0 once consumed. Entries are updated in
 * place, so the steady state costs one lookup per event and takes no lock; the
 * LRU policy retires the entries of tasks that have exited.
 */
BPF_TABLE("lru_hash", u64, u64, enqueued_at, START_ENTRIES);
BPF_PERCPU_ARRAY(stats, struct latency_stats, 1);

static inline void mark_runnable(u64 task, u64 now)
{
	u64 *ts = enqueued_at.lookup(&task);

	if (ts) {
		*ts = now;
		return;
	}
	if (enqueued_at.update(&task, &now) != 0) {
		u32 zero = 0;
		struct latency_stats *s = stats.lookup(&zero);

		if (s)
			s->lost++;
	}
}

static inline void record_switch_in(u64 task, u64 now)
{
	u64 *ts = enqueued_at.lookup(&task);
	struct latency_stats *s;
	u32 zero = 0;
	u64 delta, slot;

	if (!ts || *ts == 0 || *ts > now)
		return;
	delta = now - *ts;
	*ts = 0;

	s = stats.lookup(&zero);
	if (!s)
		return;
	slot = latency_slot(delta / 1000);
	/* Hide the known range from the compiler so the clamp the verifier needs stays. */
	asm volatile("" : "+r"(slot));
	if (slot >= HIST_SLOTS)
		slot = HIST_SLOTS - 1;
	s->slots[slot]++;
	s->sum_ns += delta;
}

#ifdef RAW_TRACEPOINTS

static inline u32 task_pid(u64 task)
{
	u32 pid = 0;

	bpf_probe_read_kernel(&pid, sizeof(pid), (void *)(task + TASK_PID_OFFSET));
	return pid;
}

static inline u64 prev_state(struct bpf_raw_tracepoint_args *ctx)
{
#if SWITCH_HAS_PREV_STATE
	return (u32)ctx->args[3];
#elif TASK_STATE_SIZE == 4
	u32 state = 0;

	bpf_probe_read_kernel(&state, sizeof(state), (void *)(ctx->args[1] + TASK_STATE_OFFSET));
	return state;
#else
	u64 state = 0;

	bpf_probe_read_kernel(&state, sizeof(state), (void *)(ctx->args[1] + TASK_STATE_OFFSET));
	return state;
#endif
}

RAW_TRACEPOINT_PROBE(sched_wakeup)
{
	mark_runnable(ctx->args[0], bpf_ktime_get_ns());
	return 0;
}

RAW_TRACEPOINT_PROBE(sched_wakeup_new)
{
	mark_runnable(ctx->args[0], bpf_ktime_get_ns());
	return 0;
}

RAW_TRACEPOINT_PROBE(sched_switch)
{
	u64 now = bpf_ktime_get_ns();
	u64 prev = ctx->args[1];

	if (((u8)ctx->args[0] || prev_state(ctx) == 0) && task_pid(prev) != 0)
		mark_runnable(prev, now);
	/* The idle task is never marked runnable, so switching to it records nothing. */
	record_switch_in(ctx->args[2], now);
	return 0;
}

#else /* classic tracepoints */

TRACEPOINT_PROBE(sched, sched_wakeup)
{
	if (args->pid != 0)
		mark_runnable(args->pid, bpf_ktime_get_ns());
	return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
	if (args->pid != 0)
		mark_runnable(args->pid, bpf_ktime_get_ns());
	return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
	u64 now = bpf_ktime_get_ns();
	long state = args->prev_state;

	if ((state == 0 || (state & PREEMPTED_STATE)) && args->prev_pid != 0)
		mark_runnable(args->prev_pid, now);
	if (args->next_pid != 0)
		record_switch_in(args->next_pid, now);
	return 0;
}

#endif

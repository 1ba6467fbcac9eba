// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/*
 * Run-queue latency: time from a task becoming runnable until it is switched in.
 *
 * Two ways to attach, chosen by gsender_bcc.program and given as -D flags:
 *
 * RAW_TRACEPOINTS (when the kernel's BTF describes the layout): the cheaper raw
 * tracepoints, whose arguments are task_struct pointers. Tasks are keyed by
 * pointer; the one field read, the pid (to leave out the idle task), is read at
 * TASK_PID_OFFSET. sched_switch passes prev_state since Linux 5.18, commit
 * fa2c3254d7cf "sched/tracing: Don't re-read p->state when emitting
 * sched_switch event" (SWITCH_HAS_PREV_STATE=1); before, it is read at
 * TASK_STATE_OFFSET, TASK_STATE_SIZE bytes: task_struct.__state, an unsigned
 * int, since Linux 5.14, commit 2f064a59a11f "sched: Change
 * task_struct::state"; a long named state before that. A preempted task is
 * flagged by the preempt argument.
 *
 * Otherwise classic tracepoints, whose fields come from tracefs: tasks are keyed
 * by pid, and a preempted task shows the PREEMPTED_STATE bit in prev_state.
 *
 * START_ENTRIES sizes the map of enqueue timestamps.
 *
 * PER_CGROUP=1 charges each sample to the cgroup v2 of the task that waited:
 * the task being switched in. At sched_switch the current task is still the
 * one leaving the CPU, so the sample waits in its CPU's pending_ns until the
 * next sched_switch on that CPU, whose current task is the one switched in
 * now; bpf_get_current_cgroup_id() then names its cgroup, with no task fields
 * read. The host's histogram is then the sum of the cgroups'. MAX_CGROUPS
 * bounds the cgroups tracked; samples of cgroups beyond it are counted under
 * OVERFLOW_CGROUP, an entry user space creates before attaching.
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

#if PER_CGROUP
BPF_HASH(cgroup_counts, u64, struct cgroup_stats, MAX_CGROUPS);
/* An all-zero value to create entries from: too large for the BPF stack. */
BPF_ARRAY(zero_cgroup_stats, struct cgroup_stats, 1);
#endif

static __always_inline void mark_runnable(u64 task, u64 now)
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

static __always_inline u64 clamped_slot(u64 delta_ns)
{
	u64 slot = latency_slot(delta_ns / 1000);

	/* Hide the known range from the compiler so the clamp the verifier needs stays. */
	asm volatile("" : "+r"(slot));
	if (slot >= HIST_SLOTS)
		slot = HIST_SLOTS - 1;
	return slot;
}

#if PER_CGROUP
static __always_inline void charge_cgroup(u64 delta_ns)
{
	u64 cgroup = bpf_get_current_cgroup_id();
	struct cgroup_stats *c = cgroup_counts.lookup(&cgroup);
	u64 slot = clamped_slot(delta_ns);

	if (!c) {
		u32 zero = 0;
		struct cgroup_stats *blank = zero_cgroup_stats.lookup(&zero);

		/* NOEXIST: another CPU may have created it meanwhile; never overwrite its counts. */
		if (blank)
			cgroup_counts.insert(&cgroup, blank);
		c = cgroup_counts.lookup(&cgroup);
		if (!c) {
			cgroup = OVERFLOW_CGROUP;
			c = cgroup_counts.lookup(&cgroup);
			if (!c)
				return;
		}
	}
	__sync_fetch_and_add(&c->slots[slot], 1);
	__sync_fetch_and_add(&c->sum_ns, delta_ns);
}
#endif

/*
 * Called at every sched_switch with the task switched in: first charge the
 * sample of the task that is now leaving the CPU, then take the new one.
 */
static __always_inline void record_switch_in(u64 task, u64 now)
{
	u64 *ts = enqueued_at.lookup(&task);
	struct latency_stats *s;
	u32 zero = 0;
	u64 delta;

	s = stats.lookup(&zero);
	if (!s)
		return;
#if PER_CGROUP
	if (s->pending) {
		charge_cgroup(s->pending_ns);
		s->pending = 0;
	}
#endif
	if (!ts || *ts == 0 || *ts > now)
		return;
	delta = now - *ts;
	*ts = 0;
#if PER_CGROUP
	s->pending_ns = delta;
	s->pending = 1;
#else
	s->slots[clamped_slot(delta)]++;
	s->sum_ns += delta;
#endif
}

#ifdef RAW_TRACEPOINTS

static __always_inline u32 task_pid(u64 task)
{
	u32 pid = 0;

	bpf_probe_read_kernel(&pid, sizeof(pid), (void *)(task + TASK_PID_OFFSET));
	return pid;
}

static __always_inline u64 prev_state(struct bpf_raw_tracepoint_args *ctx)
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
	/* pid 0, the idle task, is never marked runnable: switching to it records nothing. */
	record_switch_in(args->next_pid, now);
	return 0;
}

#endif

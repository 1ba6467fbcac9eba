// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/*
 * Run-queue latency: time from a task becoming runnable until it is switched in.
 *
 * Two ways to measure it, chosen by gsender_bcc.program and given as -D flags.
 *
 * RAW_TRACEPOINTS (the kernel's BTF locates task_struct.sched_info): the
 * scheduler already measures every such wait. When a task becomes runnable it
 * stamps sched_info.last_queued; when the task is switched in (just after the
 * sched_switch tracepoint) it adds the wait to sched_info.run_delay and counts
 * the dispatch in sched_info.pcount. This is what /proc/PID/schedstat shows.
 * So one program, on sched_switch only, reads the task leaving the CPU: since
 * it was last seen leaving, one more dispatch (pcount) and run_delay's growth
 * is exactly the wait before the run now ending. No clock is read and no
 * wakeup is traced; a second program forgets each task as it is freed. The task leaving is the current task, so its cgroup is
 * bpf_get_current_cgroup_id(). SCHED_INFO_OFFSET is the byte offset in
 * task_struct of sched_info.pcount, followed by sched_info.run_delay (both
 * u64). Tasks are keyed by task_struct pointer; the idle task (pid 0) is left
 * out, as the scheduler leaves it out.
 *
 * Otherwise classic tracepoints, whose fields come from tracefs: the wait is
 * timed here, from sched_wakeup, sched_wakeup_new or a switch-out while still
 * runnable (prev_state 0, or the PREEMPTED_STATE bit) to the switch-in. Tasks
 * are keyed by pid.
 *
 * START_ENTRIES sizes the map of tasks.
 *
 * PER_CGROUP=1 charges each sample to the cgroup v2 of the task that waited,
 * and the host's histogram is then the sum of the cgroups'. On classic
 * tracepoints the sample is taken at the switch-in, where the current task is
 * still the one leaving; it waits in its CPU's pending_ns until the next
 * sched_switch on that CPU, whose current task is the one that waited.
 * MAX_CGROUPS bounds the cgroups tracked; samples of cgroups beyond it are
 * counted under OVERFLOW_CGROUP, an entry user space creates before attaching.
 *
 * Counters are per CPU, cumulative and never cleared: user space sums the CPUs
 * and takes differences between reads.
 */
#include "runqlat.h"

_Static_assert(HIST_SLOTS == (HIST_LOG2_MAX - HIST_SUB_BITS + 1) * HIST_SUB_COUNT + 1,
	       "HIST_SLOTS does not match the layout constants");
_Static_assert(HIST_SUB_COUNT == 1 << HIST_SUB_BITS, "HIST_SUB_COUNT must be 2^HIST_SUB_BITS");

BPF_PERCPU_ARRAY(stats, struct latency_stats, 1);

#if PER_CGROUP
BPF_HASH(cgroup_counts, u64, struct cgroup_stats, MAX_CGROUPS);
/* An all-zero value to create entries from: too large for the BPF stack. */
BPF_ARRAY(zero_cgroup_stats, struct cgroup_stats, 1);
#endif

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
/* Count one sample of the current task's cgroup. */
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

/* Count one sample in this CPU's histogram. */
static __always_inline void count_on_cpu(struct latency_stats *s, u64 delta_ns)
{
	s->slots[clamped_slot(delta_ns)]++;
	s->sum_ns += delta_ns;
}

/* Count samples that could not be taken (agent.samples_lost). */
static __always_inline void count_lost(u64 samples)
{
	u32 zero = 0;
	struct latency_stats *s = stats.lookup(&zero);

	if (s)
		s->lost += samples;
}

#ifdef RAW_TRACEPOINTS

/* The first two fields of task_struct.sched_info, as the scheduler keeps them. */
struct dispatches {
	u64 pcount;	/* times switched in after a counted wait */
	u64 run_delay;	/* ns waited in all, over those */
};

/*
 * task -> its dispatches when it last left a CPU. Entries are updated in place,
 * so the steady state costs one lookup per switch and takes no lock. A task's
 * entry is deleted when the task is freed; the LRU policy would retire it too.
 */
BPF_TABLE("lru_hash", u64, struct dispatches, last_seen, START_ENTRIES);

RAW_TRACEPOINT_PROBE(sched_switch)
{
	u64 prev = ctx->args[1];
	struct dispatches now, *seen;
	u64 waited;

	/* The task leaving is still the current one; pid 0 is the idle task. */
	if ((u32)bpf_get_current_pid_tgid() == 0)
		return 0;
	if (bpf_probe_read_kernel(&now, sizeof(now), (void *)(prev + SCHED_INFO_OFFSET)) != 0)
		return 0;
	seen = last_seen.lookup(&prev);
	if (seen && now.pcount >= seen->pcount && now.run_delay >= seen->run_delay) {
		/* No new dispatch: it ran on without a counted wait (none to report). */
		if (now.pcount == seen->pcount)
			return 0;
		if (now.pcount - seen->pcount > 1) {
			/* Several waits summed together cannot be told apart. */
			count_lost(now.pcount - seen->pcount);
			*seen = now;
			return 0;
		}
		waited = now.run_delay - seen->run_delay;
		*seen = now;
	} else {
		/* First seen, or a new task at an exited one's address (a missed free). */
		if (seen)
			*seen = now;
		else if (last_seen.update(&prev, &now) != 0)
			count_lost(1);
		/* Only a first dispatch is known to be one wait. */
		if (now.pcount != 1)
			return 0;
		waited = now.run_delay;
	}
#if PER_CGROUP
	charge_cgroup(waited);
#else
	{
		u32 zero = 0;
		struct latency_stats *s = stats.lookup(&zero);

		if (s)
			count_on_cpu(s, waited);
	}
#endif
	return 0;
}

/*
 * A task_struct is freed here, and its address may then be a new task's: forget
 * it, so the new task is never measured against the old one's counters.
 */
RAW_TRACEPOINT_PROBE(sched_process_free)
{
	u64 task = ctx->args[0];

	last_seen.delete(&task);
	return 0;
}

#else /* classic tracepoints */

/*
 * pid -> time it became runnable (ns), 0 once consumed. Updated in place, as
 * last_seen is.
 */
BPF_TABLE("lru_hash", u64, u64, enqueued_at, START_ENTRIES);

static __always_inline void mark_runnable(u64 task, u64 now)
{
	u64 *ts = enqueued_at.lookup(&task);

	if (ts) {
		*ts = now;
		return;
	}
	if (enqueued_at.update(&task, &now) != 0)
		count_lost(1);
}

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
	count_on_cpu(s, delta);
#endif
}

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

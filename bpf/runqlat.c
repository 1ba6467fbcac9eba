// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/*
 * Run-queue latency, as runqlat measures it: the time from a task becoming runnable
 * (sched_wakeup, sched_wakeup_new, or a switch-out while still runnable, preempted
 * included) until sched_switch switches it in, both ends read from the kernel's monotonic
 * clock (bpf_ktime_get_ns) here. pid 0, the idle task, never counts.
 *
 * The handlers are the same on both kinds of hook; gsender_bcc.program picks the kind and
 * passes it and the settings as -D flags:
 *  RAW_TRACEPOINTS (the kernel's BTF describes task_struct): the hooks hand over task_struct
 *  pointers, which key the tasks. The task leaving is still runnable if it was preempted or
 *  the state it leaves with is TASK_RUNNING: sched_switch's prev_state where
 *  PREV_STATE_ARGUMENT=1 (kernels that set it right), else STATE_SIZE bytes at STATE_OFFSET
 *  in task_struct.
 *  Otherwise classic tracepoints, whose fields come from tracefs: tasks are keyed by pid, and
 *  the task leaving is still runnable if prev_state is 0 or has the PREEMPTED_STATE bit.
 *
 * START_ENTRIES sizes the map of start times, one entry per task seen runnable. An entry is
 * updated in place (a consumed start is zeroed, never deleted) and deleted when the task is
 * freed (sched_process_free); a task the full map cannot take is counted as lost.
 *
 * PER_CGROUP=1 charges each sample to the cgroup v2 of the task that waited, and the host's
 * histogram is then the sum of the cgroups'. The sample is taken at the switch-in, where the
 * current task is still the one leaving; it waits in its CPU's pending_ns until the next
 * sched_switch on that CPU, whose current task is the one that waited. MAX_CGROUPS bounds
 * the cgroups tracked; samples of cgroups beyond it are counted under OVERFLOW_CGROUP, an
 * entry user space creates before attaching.
 *
 * CULPRITS=1 (needs PER_CGROUP) also splits each sample by who made it wait: the cgroups of
 * the tasks that ran on the CPU during the wait, each charged the time it ran, in the waiting
 * cgroup's own entry (runqlat.h: itself, the reserved culprits, CULPRIT_SLOTS other cgroups
 * and the rest), so reading the culprits costs no more entries than reading the cgroups. Each
 * CPU keeps a timeline of its last TIMELINE_SLOTS occupants (the cgroup of each task that
 * left it, or CULPRIT_IDLE, and when it came on, by the same clock). A pending sample is split
 * at the switch-out of the task that waited: the timeline, walked back from its switch-in,
 * holds exactly the occupants during the wait. What the walk cannot reach is charged to
 * CULPRIT_UNTRACKED; the part of a wait queued on another CPU before sched_migrate_task moved
 * the task, to CULPRIT_MIGRATED. The parts add up to the sample, in nanoseconds.
 *
 * Every counter is per CPU or per cgroup, cumulative and never cleared: user space sums the
 * CPUs and takes differences between reads.
 */
#include "runqlat.h"

_Static_assert(HIST_SLOTS == (HIST_LOG2_MAX - HIST_SUB_BITS + 1) * HIST_SUB_COUNT + 1,
	       "HIST_SLOTS does not match the layout constants");
_Static_assert(HIST_SUB_COUNT == 1 << HIST_SUB_BITS, "HIST_SUB_COUNT must be 2^HIST_SUB_BITS");
_Static_assert((TIMELINE_SLOTS & (TIMELINE_SLOTS - 1)) == 0, "TIMELINE_SLOTS must be a power of 2");
_Static_assert((CULPRIT_SLOTS & (CULPRIT_SLOTS - 1)) == 0, "CULPRIT_SLOTS must be a power of 2");

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
/* Count one sample of cgroup; return its entry (the overflow entry's beyond the map's room). */
static __always_inline struct cgroup_stats *charge_cgroup(u64 cgroup, u64 delta_ns)
{
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
				return 0;
		}
	}
	__sync_fetch_and_add(&c->slots[slot], 1);
	__sync_fetch_and_add(&c->sum_ns, delta_ns);
	return c;
}
#endif

#if CULPRITS
#if !PER_CGROUP
#error "CULPRITS needs PER_CGROUP"
#endif
/* The epoch: user space moves it on at each reading; a slot not charged in it may change hands. */
BPF_ARRAY(culprit_epoch, u64, 1);

struct occupant {
	u64 start;	/* when it came on (bpf_ktime_get_ns); 0: empty */
	u64 culprit;
};

/* A part of a wait: the culprit it is charged to, and how long. */
struct piece {
	u64 culprit;
	u64 ns;
};

/* A wait has at most a migrated part, one per occupant walked, and an untracked part. */
#define PIECES (TIMELINE_SLOTS + 2)

/* One per CPU: who ran on it lately, oldest overwritten first. */
struct timeline {
	u64 written;		/* occupants recorded so far; the newest is slot written - 1 */
	u64 current_start;	/* when the task on the CPU now came on; 0: not seen yet */
	u64 pending_moved;	/* when the pending sample's task moved CPU, or 0 */
	struct occupant slots[TIMELINE_SLOTS];
	u64 pieces;		/* the parts of the wait being split, in piece[] */
	u64 slot;		/* the culprit slot a search stopped at */
	struct piece piece[PIECES];
};

BPF_PERCPU_ARRAY(timelines, struct timeline, 1);

/* Charge ns to a slot, in epoch. */
static __always_inline void charge_slot(struct culprit_slot *slot, u64 ns, u64 epoch)
{
	slot->epoch = epoch;
	__sync_fetch_and_add(&slot->ns, ns);
}

/*
 * Add ns of the waiting cgroup's wait (its entry c, its id victim) behind culprit where that
 * has a counter of its own: self_ns (the victim itself) or a reserved one. Return whether it
 * did; the other culprits take a slot (charge_culprit).
 */
static __always_inline int charge_counter(struct cgroup_stats *c, u64 victim, u64 culprit,
					  u64 ns)
{
	if (culprit == victim) {
		__sync_fetch_and_add(&c->self_ns, ns);
		return 1;
	}
	if (culprit >= CULPRIT_UNTRACKED) {
		u64 reserved = CULPRIT_IDLE - culprit;

		/* Hide the known range from the compiler so the check the verifier needs stays. */
		asm volatile("" : "+r"(reserved));
		if (reserved < RESERVED_CULPRITS)
			__sync_fetch_and_add(&c->reserved_ns[reserved], ns);
		return 1;
	}
	return 0;
}

/*
 * Add ns of the waiting cgroup's wait (its entry c, its id victim) behind culprit: to self_ns,
 * a reserved counter, the culprit's slot, the first slot not charged this epoch (which the
 * culprit takes), or other_ns where every slot was charged this epoch. Two CPUs taking one
 * slot at once may leave one's first charge with the other's culprit.
 *
 * Each search notes the slot it stops at through memory (volatile, t->slot), so that the
 * verifier knows it as any slot, not as each constant it can be: every stop leads into one
 * charge, which it walks once.
 */
static __always_inline void charge_culprit(struct timeline *t, struct cgroup_stats *c,
					   u64 victim, u64 culprit, u64 ns, u64 epoch)
{
	u64 n;
	u32 i;

	if (charge_counter(c, victim, culprit, ns))
		return;
	*(volatile u64 *)&t->slot = CULPRIT_SLOTS;
#pragma unroll
	for (i = 0; i < CULPRIT_SLOTS; i++) {
		if (c->culprits[i].culprit == culprit) {
			*(volatile u64 *)&t->slot = i;
			break;
		}
	}
	n = *(volatile u64 *)&t->slot;
	if (n < CULPRIT_SLOTS) {
		charge_slot(&c->culprits[n], ns, epoch);
		return;
	}
#pragma unroll
	for (i = 0; i < CULPRIT_SLOTS; i++) {
		if (c->culprits[i].epoch != epoch) {
			*(volatile u64 *)&t->slot = i;
			break;
		}
	}
	n = *(volatile u64 *)&t->slot;
	if (n < CULPRIT_SLOTS) {
		struct culprit_slot *slot = &c->culprits[n];

		slot->claimed_at = slot->ns;
		slot->culprit = culprit;
		charge_slot(slot, ns, epoch);
		return;
	}
	__sync_fetch_and_add(&c->other_ns, ns);
}

/*
 * Note a part of the wait being split: ns behind culprit, added to the last part where that
 * has the same culprit (a run of one culprit makes one part). The parts go through memory
 * (volatile), so that the verifier knows their count as any value below PIECES, not as each
 * constant it can be: one path through what follows, not one per count.
 */
static __always_inline void add_piece(struct timeline *t, u64 culprit, u64 ns)
{
	u64 n = *(volatile u64 *)&t->pieces;

	if (n - 1 < PIECES && t->piece[n - 1].culprit == culprit) {
		t->piece[n - 1].ns += ns;
	} else if (n < PIECES) {
		t->piece[n].culprit = culprit;
		t->piece[n].ns = ns;
		*(volatile u64 *)&t->pieces = n + 1;
	}
}

/*
 * Split a wait of the cgroup victim (its entry c) that ended at end: migrated ns of it (spent
 * queued on another CPU) to CULPRIT_MIGRATED, and the on_cpu ns before end back over this
 * CPU's earlier occupants, each the part of it that it ran in. An idle occupant takes all that
 * is left: a CPU goes idle only while nothing waits on it, so a wait overlaps idle time only
 * at its start (a task woken onto an idle CPU). What the walk does not reach goes to
 * CULPRIT_UNTRACKED. Runs of one culprit make one part. The walk notes the parts; a second
 * loop charges them, so the charge is written (and inlined) once. Both loops keep what they
 * gather in the timeline (add_piece), not in registers: the verifier then walks each pass
 * through them once, not once per value it could work out for a run or a count.
 */
static __always_inline void split_wait(struct timeline *t, struct cgroup_stats *c, u64 victim,
				       u64 end, u64 on_cpu, u64 migrated)
{
	u64 left = on_cpu, epoch;
	u32 i, zero = 0;
	u64 *moved_on = culprit_epoch.lookup(&zero);

	if (!moved_on)
		return;
	epoch = *moved_on + 1;	/* from 1: a slot never charged has epoch 0 */
	*(volatile u64 *)&t->pieces = 0;
	if (migrated)
		add_piece(t, CULPRIT_MIGRATED, migrated);
#pragma clang loop unroll(disable)
	for (i = 1; i <= TIMELINE_SLOTS; i++) {
		struct occupant *o = &t->slots[(t->written - i) & (TIMELINE_SLOTS - 1)];
		u64 take;

		if (left == 0 || o->start == 0 || o->start > end)
			break;
		take = o->culprit == CULPRIT_IDLE || end - o->start > left ? left : end - o->start;
		if (take) {
			add_piece(t, o->culprit, take);
			left -= take;
		}
		end = o->start;
	}
	if (left)
		add_piece(t, CULPRIT_UNTRACKED, left);
#pragma clang loop unroll(disable)
	for (i = 0; i < PIECES; i++) {
		if (i >= *(volatile u64 *)&t->pieces)
			break;
		charge_culprit(t, c, victim, t->piece[i].culprit, t->piece[i].ns, epoch);
	}
}

/* Add the occupant leaving the CPU now, on since start, to the CPU's timeline. */
static __always_inline void add_occupant(struct timeline *t, u64 culprit, u64 start)
{
	struct occupant *o = &t->slots[t->written & (TIMELINE_SLOTS - 1)];

	o->start = start;
	o->culprit = culprit;
	t->written++;
}

/* The task on the CPU (of culprit, on since current_start) leaves it now. */
static __always_inline void record_occupant(struct timeline *t, u64 culprit, u64 now)
{
	if (t->current_start)
		add_occupant(t, culprit, t->current_start);
	t->current_start = now;
}

static __always_inline struct timeline *this_timeline(void)
{
	u32 zero = 0;

	return timelines.lookup(&zero);
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

/* What start_times keeps of a task. */
struct start_time {
	u64 since;	/* when it became runnable (ns), 0 once consumed */
	u64 moved;	/* when it moved CPU while runnable, or 0 (read with CULPRITS only) */
};

/* task (pointer or pid) -> when it became runnable; preallocated, updated in place. */
BPF_HASH(start_times, u64, struct start_time, START_ENTRIES);

/* The task became runnable at now. */
static __always_inline void mark_runnable(u64 task, u64 now)
{
	struct start_time *q = start_times.lookup(&task), fresh = {.since = now};

	if (q) {
		*q = fresh;
		return;
	}
	if (start_times.insert(&task, &fresh) != 0)
		count_lost(1);
}

#if CULPRITS
/*
 * The pending sample, waited ns of the cgroup whose task leaves now (its id victim, its entry
 * c), ended at end, when that task came on; the part before its move from another CPU, if it
 * moved during the wait, is migrated.
 */
static __always_inline void split_pending(struct timeline *t, struct cgroup_stats *c, u64 victim,
					  u64 waited, u64 end)
{
	u64 moved = t->pending_moved, migrated = 0;
	/* The occupant the wait ended behind: the newest but one, after the task leaving now. */
	struct occupant *o = &t->slots[(t->written - 2) & (TIMELINE_SLOTS - 1)];

	/* end < waited: the CPU's first switch seen; the walk finds nothing, all is untracked. */
	if (end >= waited && moved > end - waited && moved < end)
		migrated = moved - (end - waited);
	/*
	 * Most waits lie inside one occupant's run. Behind the waiting cgroup itself or behind
	 * idle, that is one counter, found without the walk (split_wait charges it the same).
	 */
	if (!migrated && end >= waited && o->start != 0 && o->start <= end - waited &&
	    charge_counter(c, victim, o->culprit, waited))
		return;
	split_wait(t, c, victim, end, waited - migrated, migrated);
}
#endif

/*
 * sched_switch: prev leaves the CPU (still runnable or not; the idle task if idle), next
 * comes on. First charge the pending sample of the task now leaving (it waited before
 * it came on), then mark prev if it still waits, then end next's wait.
 */
static __always_inline void on_switch(u64 prev, int runnable, int idle, u64 next)
{
	u64 now = bpf_ktime_get_ns(), delta;
	struct start_time *q;
	struct latency_stats *s;
	u32 zero = 0;
#if CULPRITS
	struct timeline *t = this_timeline();
	/* The idle task never waits: as an occupant it is idle, not its cgroup. */
	u64 cgroup = idle ? CULPRIT_IDLE : bpf_get_current_cgroup_id(), end;

	if (!t)
		return;
#endif

	s = stats.lookup(&zero);
	if (!s)
		return;
	if (runnable)
		mark_runnable(prev, now);
#if CULPRITS
	/*
	 * The occupant first: then neither it nor prev's state is still to be used while the
	 * pending sample is split, which the verifier would walk once per value of each. The
	 * walk meets the task leaving as the newest occupant, on since the wait ended: none of it.
	 */
	end = t->current_start;
	record_occupant(t, cgroup, now);
	if (s->pending) {
		/*
		 * The idle task leaving with a sample pending: the switch-out of the task that
		 * waited was never reported. The sample still counts, as the idle task's cgroup's
		 * (the root), as it counts as any task's that leaves after an unreported switch.
		 */
		u64 victim = idle ? bpf_get_current_cgroup_id() : cgroup;
		struct cgroup_stats *c = charge_cgroup(victim, s->pending_ns);

		if (c)
			split_pending(t, c, victim, s->pending_ns, end);
		s->pending = 0;
	}
#elif PER_CGROUP
	if (s->pending) {
		charge_cgroup(bpf_get_current_cgroup_id(), s->pending_ns);
		s->pending = 0;
	}
#endif
	q = start_times.lookup(&next);
	if (!q || q->since == 0 || q->since > now)
		return;
	delta = now - q->since;
	q->since = 0;
#if PER_CGROUP
	s->pending_ns = delta;
	s->pending = 1;
#if CULPRITS
	t->pending_moved = q->moved;
#endif
#else
	count_on_cpu(s, delta);
#endif
}

#if CULPRITS
/* A task moves CPU: at a wakeup (before it is marked runnable) or while it waits. */
static __always_inline void on_migrate(u64 task)
{
	struct start_time *q = start_times.lookup(&task);

	if (q && q->since != 0)
		q->moved = bpf_ktime_get_ns();
}
#endif

/* A task is freed: its pointer or pid may be a new task's next. */
static __always_inline void forget_task(u64 task)
{
	start_times.delete(&task);
}

#ifdef RAW_TRACEPOINTS

/* The width of task_struct's state: unsigned int __state since 5.14, long state before. */
#if STATE_SIZE == 8
typedef u64 task_state;
#else
typedef u32 task_state;
#endif

/*
 * Whether prev, leaving its CPU, stays runnable: preempted, or the state it leaves with is
 * TASK_RUNNING. PREV_STATE_ARGUMENT: sched_switch hands that state over (args[3]), and this
 * kernel sets it right; else it is read from task_struct, which costs a helper call.
 */
static __always_inline int still_runnable(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[0])
		return 1;
#if PREV_STATE_ARGUMENT
	return (u32)ctx->args[3] == 0;
#else
	task_state state;

	if (bpf_probe_read_kernel(&state, sizeof(state), (void *)(ctx->args[1] + STATE_OFFSET)) != 0)
		return 0;
	return state == 0;
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

/*
 * Whether prev, the task leaving this CPU, is the CPU's idle task. That is pid 0, the
 * current task's, asked of a helper until the CPU is first seen going from idle. A CPU's
 * idle task never changes, so from then on its pointer answers without the call.
 */
static __always_inline int leaving_idle(u64 prev)
{
	u32 zero = 0;
	struct latency_stats *s = stats.lookup(&zero);

	if (s && s->idle_task)
		return prev == s->idle_task;
	if ((u32)bpf_get_current_pid_tgid() != 0)
		return 0;
	if (s)
		s->idle_task = prev;
	return 1;
}

/* (bool preempt, struct task_struct *prev, struct task_struct *next[, prev_state]) */
RAW_TRACEPOINT_PROBE(sched_switch)
{
	u64 prev = ctx->args[1];
	int idle = leaving_idle(prev);

	on_switch(prev, !idle && still_runnable(ctx), idle, ctx->args[2]);
	return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_free)
{
	forget_task(ctx->args[0]);
	return 0;
}

#if CULPRITS
RAW_TRACEPOINT_PROBE(sched_migrate_task)
{
	on_migrate(ctx->args[0]);
	return 0;
}
#endif

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
	long state = args->prev_state;
	int idle = args->prev_pid == 0;

	on_switch(args->prev_pid, !idle && (state == 0 || (state & PREEMPTED_STATE)), idle,
		  args->next_pid);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_free)
{
	forget_task(args->pid);
	return 0;
}

#if CULPRITS
TRACEPOINT_PROBE(sched, sched_migrate_task)
{
	on_migrate(args->pid);
	return 0;
}
#endif

#endif

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
 * CULPRITS=1 (needs PER_CGROUP) also splits each sample by who made it wait: the
 * cgroups of the tasks that ran on the CPU during the wait, each charged the time it
 * ran, in culprit_counts[(waiting cgroup, culprit)]. Each CPU keeps a timeline of its
 * last TIMELINE_SLOTS occupants (the cgroup of each task that left it, or CULPRIT_IDLE,
 * and when it came on). Both kinds of tracepoint learn a sample at the switch-out of
 * the task that waited (classic ones keep it pending until then), when the wait ended
 * at that task's own switch-in: the timeline, walked back from there, holds exactly the
 * occupants during the wait. Raw tracepoints read no clock for it: each task's
 * sched_info.last_arrival (LAST_ARRIVAL_OFFSET bytes after pcount) says when it came on,
 * and at sched_migrate_task run_delay's growth is the part of the wait queued on the CPU
 * left. What the walk cannot reach is charged to CULPRIT_UNTRACKED, the part queued on
 * another CPU to CULPRIT_MIGRATED. The parts add up to the sample, in nanoseconds. MAX_PAIRS
 * bounds the pairs; beyond it a pair is counted under (OVERFLOW_CGROUP,
 * OVERFLOW_CGROUP), an entry user space creates before attaching. The pairs are not
 * cumulative: a host with many services makes more pairs than any map holds for long.
 * They go to one of two maps, culprit_counts_0 or _1, the one culprit_side names; at
 * each reading user space flips the side and then empties the map it left, so each map
 * holds one interval's pairs.
 *
 * The other counters are per CPU or per cgroup, cumulative and never cleared: user space
 * sums the CPUs and takes differences between reads.
 */
#include "runqlat.h"

_Static_assert(HIST_SLOTS == (HIST_LOG2_MAX - HIST_SUB_BITS + 1) * HIST_SUB_COUNT + 1,
	       "HIST_SLOTS does not match the layout constants");
_Static_assert(HIST_SUB_COUNT == 1 << HIST_SUB_BITS, "HIST_SUB_COUNT must be 2^HIST_SUB_BITS");
_Static_assert((TIMELINE_SLOTS & (TIMELINE_SLOTS - 1)) == 0, "TIMELINE_SLOTS must be a power of 2");

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
/* Count one sample of cgroup; return the key it was counted under. */
static __always_inline u64 charge_cgroup(u64 cgroup, u64 delta_ns)
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
				return cgroup;
		}
	}
	__sync_fetch_and_add(&c->slots[slot], 1);
	__sync_fetch_and_add(&c->sum_ns, delta_ns);
	return cgroup;
}
#endif

#if CULPRITS
#if !PER_CGROUP
#error "CULPRITS needs PER_CGROUP"
#endif
struct culprit_pair {
	u64 victim;	/* the cgroup whose task waited */
	u64 culprit;	/* a cgroup that ran meanwhile, or a reserved CULPRIT_* */
};

BPF_HASH(culprit_counts_0, struct culprit_pair, u64, MAX_PAIRS);
BPF_HASH(culprit_counts_1, struct culprit_pair, u64, MAX_PAIRS);
/* Which of the two maps is charged now (0 or 1): user space flips it at each reading. */
BPF_ARRAY(culprit_side, u64, 1);

struct occupant {
	u64 start;	/* when it came on (raw: sched_info.last_arrival, the run queue's
			 * clock; classic: bpf_ktime_get_ns); 0: empty */
	u64 culprit;
};

/* One per CPU: who ran on it lately, oldest overwritten first. */
struct timeline {
	u64 written;		/* occupants recorded so far; the newest is slot written - 1 */
	/* Classic tracepoints only (raw ones read when each task came on): */
	u64 current_start;	/* when the task on the CPU now came on; 0: not seen yet */
	u64 pending_moved;	/* when the pending sample's task moved CPU, or 0 */
	struct occupant slots[TIMELINE_SLOTS];
};

BPF_PERCPU_ARRAY(timelines, struct timeline, 1);

/*
 * The pair's total in culprit_counts_0 or _1, created at 0 if it is new (NOEXIST: another
 * CPU may have made it meanwhile); NULL where the map is full. (BCC's map calls cannot be
 * written once in a macro for both maps.)
 */
static __always_inline u64 *pair_total_0(struct culprit_pair *key)
{
	u64 zero = 0, *total = culprit_counts_0.lookup(key);

	if (!total) {
		culprit_counts_0.insert(key, &zero);
		total = culprit_counts_0.lookup(key);
	}
	return total;
}

static __always_inline u64 *pair_total_1(struct culprit_pair *key)
{
	u64 zero = 0, *total = culprit_counts_1.lookup(key);

	if (!total) {
		culprit_counts_1.insert(key, &zero);
		total = culprit_counts_1.lookup(key);
	}
	return total;
}

/* Add ns to the pair in the map side names, or to the overflow pair if that map is full. */
static __always_inline void charge_pair(u32 side, u64 victim, u64 culprit, u64 ns)
{
	struct culprit_pair key = {.victim = victim, .culprit = culprit};
	u64 *total = side ? pair_total_1(&key) : pair_total_0(&key);

	if (!total) {
		key.victim = OVERFLOW_CGROUP;
		key.culprit = OVERFLOW_CGROUP;
		total = side ? culprit_counts_1.lookup(&key) : culprit_counts_0.lookup(&key);
		if (!total)
			return;
	}
	__sync_fetch_and_add(total, ns);
}

/* The map charged now: 0 or 1. */
static __always_inline u32 current_side(void)
{
	u32 zero = 0;
	u64 *side = culprit_side.lookup(&zero);

	return side && *side ? 1 : 0;
}

/*
 * Split a wait of victim's that ended at end: migrated ns of it (spent queued on another
 * CPU) to CULPRIT_MIGRATED, and the on_cpu ns before end back over this CPU's earlier
 * occupants, each the part of it that it ran in. An idle occupant takes all that is left:
 * a CPU goes idle only while nothing waits on it, so a wait overlaps idle time only at its
 * start (a task woken onto an idle CPU). What the walk does not reach goes to
 * CULPRIT_UNTRACKED. Runs of one culprit are charged together.
 */
static __always_inline void split_wait(struct timeline *t, u64 victim, u64 end, u64 on_cpu,
				       u64 migrated)
{
	u64 left = on_cpu, culprit = 0, run = 0;
	u32 i, side = current_side();

	if (migrated)
		charge_pair(side, victim, CULPRIT_MIGRATED, migrated);
#pragma clang loop unroll(disable)
	for (i = 1; i <= TIMELINE_SLOTS; i++) {
		struct occupant *o = &t->slots[(t->written - i) & (TIMELINE_SLOTS - 1)];
		u64 take;

		if (left == 0 || o->start == 0 || o->start > end)
			break;
		take = o->culprit == CULPRIT_IDLE || end - o->start > left ? left : end - o->start;
		if (take) {
			if (run && o->culprit != culprit) {
				charge_pair(side, victim, culprit, run);
				run = 0;
			}
			culprit = o->culprit;
			run += take;
			left -= take;
		}
		end = o->start;
	}
	if (run)
		charge_pair(side, victim, culprit, run);
	if (left)
		charge_pair(side, victim, CULPRIT_UNTRACKED, left);
}

/* Add the occupant leaving the CPU now, on since start, to the CPU's timeline. */
static __always_inline void add_occupant(struct timeline *t, u64 culprit, u64 start)
{
	struct occupant *o = &t->slots[t->written & (TIMELINE_SLOTS - 1)];

	o->start = start;
	o->culprit = culprit;
	t->written++;
}

/* Classic: the task on the CPU (of culprit, on since current_start) leaves it now. */
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

#ifdef RAW_TRACEPOINTS

/* The first two fields of task_struct.sched_info, as the scheduler keeps them. */
struct dispatches {
	u64 pcount;	/* times switched in after a counted wait */
	u64 run_delay;	/* ns waited in all, over those */
};

/* What last_seen keeps of a task. */
struct seen_task {
	struct dispatches at;	/* its dispatches when it last left a CPU */
	u64 migrated;		/* ns of its wait since then spent queued on CPUs it left */
};

/*
 * task -> what it was when it last left a CPU. Entries are updated in place, so the
 * steady state costs one lookup per switch and takes no lock. A task's entry is
 * deleted when the task is freed; the LRU policy would retire it too.
 */
BPF_TABLE("lru_hash", u64, struct seen_task, last_seen, START_ENTRIES);

#if CULPRITS
/*
 * sched_info from pcount up to last_arrival, when the task last came on a CPU (the run
 * queue's clock, as the timeline's starts are here): LAST_ARRIVAL_OFFSET bytes on.
 */
struct sched_info_head {
	u64 words[LAST_ARRIVAL_OFFSET / 8 + 1];
};

_Static_assert(LAST_ARRIVAL_OFFSET % 8 == 0 && LAST_ARRIVAL_OFFSET >= 16,
	       "sched_info.last_arrival must be a u64 after run_delay");
#endif

/* One wait that ended when a task came on a CPU. */
struct ended {
	u64 waited;	/* ns */
	u64 migrated;	/* ns of it spent queued on CPUs the task left */
};

/*
 * Find the wait that ended when prev, leaving the CPU now, came on, and when it came
 * on (*arrived, with CULPRITS). Return 1 if there is one to report.
 */
static __always_inline int ended_wait(u64 prev, struct ended *e, u64 *arrived)
{
	struct dispatches now;
	struct seen_task *seen;
#if CULPRITS
	struct sched_info_head head;

	if (bpf_probe_read_kernel(&head, sizeof(head), (void *)(prev + SCHED_INFO_OFFSET)) != 0)
		return 0;
	now.pcount = head.words[0];
	now.run_delay = head.words[1];
	*arrived = head.words[LAST_ARRIVAL_OFFSET / 8];
#else
	if (bpf_probe_read_kernel(&now, sizeof(now), (void *)(prev + SCHED_INFO_OFFSET)) != 0)
		return 0;
#endif
	seen = last_seen.lookup(&prev);
	if (seen && now.pcount >= seen->at.pcount && now.run_delay >= seen->at.run_delay) {
		/* No new dispatch: it ran on without a counted wait (none to report). */
		if (now.pcount == seen->at.pcount)
			return 0;
		e->migrated = seen->migrated;
		seen->migrated = 0;
		if (now.pcount - seen->at.pcount > 1) {
			/* Several waits summed together cannot be told apart. */
			count_lost(now.pcount - seen->at.pcount);
			seen->at = now;
			return 0;
		}
		e->waited = now.run_delay - seen->at.run_delay;
		seen->at = now;
		if (e->migrated > e->waited)
			e->migrated = e->waited;
		return 1;
	}
	/* First seen, or a new task at an exited one's address (a missed free). */
	if (seen) {
		seen->at = now;
		seen->migrated = 0;
	} else {
		struct seen_task first = {.at = now};

		if (last_seen.update(&prev, &first) != 0)
			count_lost(1);
	}
	/* Only a first dispatch is known to be one wait. */
	if (now.pcount != 1)
		return 0;
	e->waited = now.run_delay;
	e->migrated = 0;
	return 1;
}

RAW_TRACEPOINT_PROBE(sched_switch)
{
	u64 prev = ctx->args[1], arrived = 0;
	struct ended e;
	/* The task leaving is still the current one; pid 0 is the idle task. */
	int idle = (u32)bpf_get_current_pid_tgid() == 0;
#if CULPRITS
	struct timeline *t = this_timeline();
	u64 cgroup;

	if (!t)
		return 0;
	if (idle) {
		/* The idle task keeps no sched_info: its start is never needed (split_wait). */
		add_occupant(t, CULPRIT_IDLE, 1);
		return 0;
	}
	cgroup = bpf_get_current_cgroup_id();
	if (ended_wait(prev, &e, &arrived))
		split_wait(t, charge_cgroup(cgroup, e.waited), arrived, e.waited - e.migrated,
			   e.migrated);
	/* Its start is 0 only if sched_info could not be read: the record then stops walks. */
	add_occupant(t, cgroup, arrived);
#else
	if (idle || !ended_wait(prev, &e, &arrived))
		return 0;
#if PER_CGROUP
	charge_cgroup(bpf_get_current_cgroup_id(), e.waited);
#else
	{
		u32 zero = 0;
		struct latency_stats *s = stats.lookup(&zero);

		if (s)
			count_on_cpu(s, e.waited);
	}
#endif
#endif
	return 0;
}

#if CULPRITS
/*
 * A task moves CPU. If it was queued, the scheduler has just added the wait it had on
 * the CPU it leaves to run_delay (without a dispatch): that part is migrated. A task
 * that moves as it wakes has waited nothing since it last left a CPU: none is.
 */
RAW_TRACEPOINT_PROBE(sched_migrate_task)
{
	u64 task = ctx->args[0];
	struct seen_task *seen = last_seen.lookup(&task);
	struct dispatches now;

	if (!seen || bpf_probe_read_kernel(&now, sizeof(now),
					   (void *)(task + SCHED_INFO_OFFSET)) != 0)
		return 0;
	if (now.pcount == seen->at.pcount && now.run_delay >= seen->at.run_delay)
		seen->migrated = now.run_delay - seen->at.run_delay;
	return 0;
}
#endif

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

/* What enqueued_at keeps of a task. */
struct queued_task {
	u64 since;	/* when it became runnable (ns), 0 once consumed */
	u64 moved;	/* when it moved CPU while runnable, or 0 */
};

/* pid -> when it became runnable. Updated in place, as last_seen is. */
BPF_TABLE("lru_hash", u64, struct queued_task, enqueued_at, START_ENTRIES);

static __always_inline void mark_runnable(u64 task, u64 now)
{
	struct queued_task *q = enqueued_at.lookup(&task), fresh = {.since = now};

	if (q) {
		*q = fresh;
		return;
	}
	if (enqueued_at.update(&task, &fresh) != 0)
		count_lost(1);
}

#if CULPRITS
/*
 * The pending sample, waited ns, ended when the task leaving now came on (current_start);
 * the part before its move from another CPU, if it moved during the wait, is migrated.
 */
static __always_inline void classic_split(struct timeline *t, u64 victim, u64 waited)
{
	u64 end = t->current_start, moved = t->pending_moved, migrated = 0;

	if (end < waited) {
		charge_pair(current_side(), victim, CULPRIT_UNTRACKED, waited);
		return;
	}
	if (moved > end - waited && moved < end)
		migrated = moved - (end - waited);
	split_wait(t, victim, end, waited - migrated, migrated);
}
#endif

/*
 * Called at every sched_switch with the task switched in: first charge the
 * sample of the task that is now leaving the CPU, then take the new one.
 */
static __always_inline void record_switch_in(u64 prev_pid, u64 task, u64 now)
{
	struct queued_task *q = enqueued_at.lookup(&task);
	struct latency_stats *s;
	u32 zero = 0;
	u64 delta;
#if CULPRITS
	struct timeline *t = this_timeline();
	u64 cgroup = bpf_get_current_cgroup_id();

	if (!t)
		return;
#endif

	s = stats.lookup(&zero);
	if (!s)
		return;
#if CULPRITS
	if (s->pending) {
		classic_split(t, charge_cgroup(cgroup, s->pending_ns), s->pending_ns);
		s->pending = 0;
	}
	record_occupant(t, prev_pid == 0 ? CULPRIT_IDLE : cgroup, now);
#elif PER_CGROUP
	if (s->pending) {
		charge_cgroup(bpf_get_current_cgroup_id(), s->pending_ns);
		s->pending = 0;
	}
#endif
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
	record_switch_in(args->prev_pid, args->next_pid, now);
	return 0;
}

#if CULPRITS
/* A task moves CPU: at a wakeup (before it is marked runnable) or while it waits. */
TRACEPOINT_PROBE(sched, sched_migrate_task)
{
	u64 task = args->pid;
	struct queued_task *q = enqueued_at.lookup(&task);

	if (q && q->since != 0)
		q->moved = bpf_ktime_get_ns();
	return 0;
}
#endif

#endif

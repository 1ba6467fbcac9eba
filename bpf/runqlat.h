/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * What the BPF program and gsender_bcc must agree on.
 *
 * gsender_bcc reads the "#define NAME number" lines of this file, so keep each
 * constant a plain decimal literal on one line.
 *
 * Histogram layout: latencies in whole microseconds. Values below
 * HIST_SUB_COUNT each have a slot of their own. Above that, every power of two
 * [2^e, 2^(e+1)) is split into HIST_SUB_COUNT equal slots, so a slot's width is
 * at most 1/HIST_SUB_COUNT of its lower bound. Values of 2^HIST_LOG2_MAX and more
 * share the last slot. Every slot lies inside one log2 bucket, so the slots sum
 * exactly into the classic [0], [1], [2,4), [4,8), ... buckets.
 */
#ifndef GSENDER_RUNQLAT_H
#define GSENDER_RUNQLAT_H

/* The kernel's headers define this; the program compiles without them. */
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define HIST_SUB_BITS 3
#define HIST_SUB_COUNT 8
#define HIST_LOG2_MAX 32
#define HIST_SLOTS 241

/*
 * The key under which samples of cgroups beyond the map's capacity are counted.
 * No cgroup has id 0: the root cgroup's is 1.
 */
#define OVERFLOW_CGROUP 0

/*
 * Who a wait is charged to (culprit attribution): the cgroup of each task that ran on the
 * CPU while the task waited, for the time it ran, or one of these reserved culprits. Real
 * cgroup ids never come near them (kernfs ids hold a 32-bit generation above the inode).
 *  IDLE: the CPU ran no task (the wait of a task woken onto an idle CPU, for example).
 *  MIGRATED: the part of a wait spent queued on another CPU, before the task moved here.
 *  UNTRACKED: the part older than the CPU's record of recent occupants reaches back
 *  (TIMELINE_SLOTS of them), or than the program's attach.
 */
#define CULPRIT_IDLE 9223372036854775807
#define CULPRIT_MIGRATED 9223372036854775806
#define CULPRIT_UNTRACKED 9223372036854775805
#define TIMELINE_SLOTS 32

/*
 * One per CPU. The number of samples is the sum of the slots, which stays exact
 * even when a read catches a CPU between two of these increments. With the
 * per-cgroup breakdown the slots stay empty (each cgroup has its own), and
 * pending_ns holds this CPU's last sample until it can be charged. idle_task is the
 * CPU's idle task (raw tracepoints: its task_struct pointer) once it has been seen.
 */
struct latency_stats {
	u64 slots[HIST_SLOTS];
	u64 sum_ns;
	u64 lost;
	u64 pending_ns;
	u64 pending;
	u64 idle_task;
};

/*
 * With culprit attribution, each waiting cgroup's entry keeps its wait split by culprit: what
 * it waited behind itself, behind each reserved culprit, behind up to CULPRIT_SLOTS other
 * cgroups (one slot each), and behind the rest (other_ns). Every counter is cumulative and
 * a sample's parts add up to it. A slot's holder changes only where the slot was not charged
 * in the current epoch (user space moves the epoch on at each reading); its ns then run on,
 * and claimed_at keeps the value they had when the holder took the slot, so user space splits
 * the slot's growth between the holder it last saw and the new one.
 */
#define CULPRIT_SLOTS 8
#define RESERVED_CULPRITS 3

struct culprit_slot {
	u64 culprit;	/* the cgroup holding the slot; 0: never held */
	u64 ns;		/* charged to the slot's holders, cumulative */
	u64 claimed_at;	/* ns when the holder took the slot */
	u64 epoch;	/* the epoch of the slot's last charge */
};

/* One per cgroup, shared by all CPUs and updated atomically. */
struct cgroup_stats {
	u64 slots[HIST_SLOTS];
	u64 sum_ns;
#if CULPRITS
	u64 self_ns;				/* behind its own tasks */
	u64 reserved_ns[RESERVED_CULPRITS];	/* behind CULPRIT_IDLE - i */
	u64 other_ns;				/* behind cgroups no slot was free for */
	struct culprit_slot culprits[CULPRIT_SLOTS];
#endif
};

/* floor(log2(v)) for v >= 1, in five branch-free halving steps. */
static __always_inline u32 floor_log2(u64 v)
{
	u32 r = 0, shift;

	shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xFFFFULL) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFFULL) << 3; v >>= shift; r |= shift;
	shift = (v > 0xFULL) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3ULL) << 1; v >>= shift; r |= shift;
	return r | (u32)(v >> 1);
}

static __always_inline u32 latency_slot(u64 us)
{
	u32 e;

	if (us < HIST_SUB_COUNT)
		return (u32)us;
	e = floor_log2(us);
	if (e >= HIST_LOG2_MAX)
		return HIST_SLOTS - 1;
	return (e - HIST_SUB_BITS + 1) * HIST_SUB_COUNT +
	       (u32)((us >> (e - HIST_SUB_BITS)) & (HIST_SUB_COUNT - 1));
}

#endif

/*
 * wakeup: a waker writes its CLOCK_MONOTONIC time into a pipe; a wakee blocked in read()
 * takes the time it resumes. The difference, summed over the round trips, bounds from above
 * the time the wakee waited for its CPU: every such wait starts at the wakeup the write
 * makes and ends before the read returns.
 *
 * usage: wakeup ROUNDS WAKEE_CPU WAKER_CPU GAP_US
 *
 * It forks the wakee, prints "wakee PID", and starts once a line arrives on stdin (so the
 * caller can move the wakee into a cgroup first). The waker writes every GAP_US µs, long
 * enough for the wakee to block again. At the end it prints "rounds N blocked B preempted P
 * sum_ns S min_ns A": the wakee keeps only running figures, so that after its last read it has
 * next to nothing left to do (and nothing to wait for) before it exits. B and P are the
 * wakee's voluntary and involuntary context switches over the rounds, so B + P is the number
 * of its waits: a read that blocks waits once from its wakeup, a preemption once from the
 * switch-out. B falls short of N when the wakee is held off its CPU past the gap: the next
 * stamp is then already in the pipe, and its read returns without sleeping.
 */
#define _GNU_SOURCE
#include "pin.h"
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Read one stamp (8 bytes), blocking until it comes; return resume - stamp. */
static uint64_t take(int fd)
{
	uint64_t stamp;

	if (read(fd, &stamp, sizeof(stamp)) != sizeof(stamp)) {
		perror("read");
		exit(1);
	}
	return now_ns() - stamp;
}

int main(int argc, char **argv)
{
	long rounds = argc > 4 ? atol(argv[1]) : 0;
	int wakee_cpu, waker_cpu, stamps[2], results[2];
	long gap_us;
	char line[64];
	pid_t child;

	if (rounds <= 0 || pipe(stamps) || pipe(results)) {
		fprintf(stderr, "usage: wakeup ROUNDS WAKEE_CPU WAKER_CPU GAP_US\n");
		return 2;
	}
	wakee_cpu = atoi(argv[2]);
	waker_cpu = atoi(argv[3]);
	gap_us = atol(argv[4]);
	child = fork();
	if (child < 0) {
		perror("fork");
		return 1;
	}
	if (child == 0) {
		uint64_t sum = 0, least = UINT64_MAX;
		struct rusage before, after;

		/* Killed with the waker: a test that stops the waker stops both. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() == 1)
			exit(1);
		pin(wakee_cpu);
		getrusage(RUSAGE_SELF, &before);
		for (long i = 0; i < rounds; i++) {
			uint64_t took = take(stamps[0]);

			sum += took;
			if (took < least)
				least = took;
		}
		getrusage(RUSAGE_SELF, &after);
		dprintf(results[1], "rounds %ld blocked %ld preempted %ld sum_ns %llu min_ns %llu\n",
			rounds, after.ru_nvcsw - before.ru_nvcsw, after.ru_nivcsw - before.ru_nivcsw,
			(unsigned long long)sum, (unsigned long long)least);
		_exit(0);
	}
	pin(waker_cpu);
	printf("wakee %d\n", (int)child);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	for (long i = 0; i < rounds; i++) {
		struct timespec gap = {.tv_sec = gap_us / 1000000, .tv_nsec = gap_us % 1000000 * 1000};
		uint64_t stamp;

		nanosleep(&gap, NULL);
		stamp = now_ns();
		if (write(stamps[1], &stamp, sizeof(stamp)) != sizeof(stamp)) {
			perror("write");
			return 1;
		}
	}
	if (waitpid(child, NULL, 0) != child)
		return 1;
	close(results[1]);
	for (ssize_t got; (got = read(results[0], line, sizeof(line))) > 0;)
		fwrite(line, 1, got, stdout);
	return 0;
}

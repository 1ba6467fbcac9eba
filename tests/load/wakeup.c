/*
 * wakeup: a waker writes its CLOCK_MONOTONIC time into a pipe; a wakee blocked in read()
 * takes the time it resumes. The difference, summed over the round trips, bounds from above
 * the time the wakee waited for its CPU: every such wait starts at the wakeup the write
 * makes and ends before the read returns.
 *
 * usage: wakeup ROUNDS WAKEE_CPU WAKER_CPU GAP_US [poll]
 *
 * It forks the wakee, prints "wakee PID", and starts once a line arrives on stdin (so the
 * caller can move the wakee into a cgroup first). The waker writes every GAP_US µs, long
 * enough for the wakee to block again. With "poll" the wakee never blocks: it spins on a
 * non-blocking read, so resume - write is the cost of the two syscalls and the clock reads
 * alone, with no wakeup and no switch. At the end it prints "rounds N sum_ns S min_ns A":
 * the wakee keeps only running figures, so that after its last read it has next to nothing
 * left to do (and nothing to wait for) before it exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) != 0) {
		perror("sched_setaffinity");
		exit(1);
	}
}

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Read one stamp (8 bytes) as they come; return resume - stamp. */
static uint64_t take(int fd, int poll)
{
	uint64_t stamp;
	ssize_t got;

	for (;;) {
		got = read(fd, &stamp, sizeof(stamp));
		if (got == sizeof(stamp))
			return now_ns() - stamp;
		if (!(poll && got < 0 && errno == EAGAIN)) {
			perror("read");
			exit(1);
		}
	}
}

int main(int argc, char **argv)
{
	long rounds = argc > 4 ? atol(argv[1]) : 0;
	int poll = argc > 5 && strcmp(argv[5], "poll") == 0;
	int wakee_cpu, waker_cpu, stamps[2], results[2];
	long gap_us;
	char line[64];
	pid_t child;

	if (rounds <= 0 || pipe(stamps) || pipe(results)) {
		fprintf(stderr, "usage: wakeup ROUNDS WAKEE_CPU WAKER_CPU GAP_US [poll]\n");
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

		/* Killed with the waker: a test that stops the waker stops both. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() == 1)
			exit(1);
		pin(wakee_cpu);
		if (poll && fcntl(stamps[0], F_SETFL, O_NONBLOCK) != 0)
			exit(1);
		for (long i = 0; i < rounds; i++) {
			uint64_t took = take(stamps[0], poll);

			sum += took;
			if (took < least)
				least = took;
		}
		dprintf(results[1], "rounds %ld sum_ns %llu min_ns %llu\n", rounds,
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

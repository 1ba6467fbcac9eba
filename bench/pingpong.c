/*
 * pingpong: two processes pinned to one CPU bounce a byte over two pipes.
 * Each round trip is two wakeups and two context switches. Prints the mean
 * nanoseconds per round trip.
 *
 * usage: pingpong ROUNDS [CPU]
 */
#define _GNU_SOURCE
#include "pin.h"
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void move_byte(int from, int to)
{
	char byte;

	if (read(from, &byte, 1) != 1 || write(to, &byte, 1) != 1) {
		perror("pipe");
		exit(1);
	}
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 200000;
	int cpu = argc > 2 ? atoi(argv[2]) : 0;
	int ping[2], pong[2];
	struct timespec start, end;
	pid_t child;
	char byte = 'x';

	if (rounds <= 0 || pipe(ping) || pipe(pong)) {
		fprintf(stderr, "usage: pingpong ROUNDS [CPU]\n");
		return 2;
	}
	pin(cpu);
	child = fork();
	if (child < 0) {
		perror("fork");
		return 1;
	}
	if (child == 0) {
		for (long i = 0; i < rounds; i++)
			move_byte(ping[0], pong[1]);
		_exit(0);
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (long i = 0; i < rounds; i++) {
		if (write(ping[1], &byte, 1) != 1 || read(pong[0], &byte, 1) != 1) {
			perror("pipe");
			kill(child, SIGKILL);
			return 1;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	waitpid(child, NULL, 0);
	printf("%.1f\n", ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / rounds);
	return 0;
}

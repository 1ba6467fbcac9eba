/*
 * ticker: COUNT processes, one per cgroup, each waking every PERIOD_MS.
 *
 * Child i moves itself into DIR/<PREFIX>NNNN<SUFFIX> (i from 0, four digits;
 * PREFIX svc and SUFFIX .service unless given; docker- and <60 hex digits>.scope
 * make docker containers' cgroups) and then sleeps PERIOD_MS at a time, so
 * every cgroup keeps getting run-queue samples while the children run. Stop
 * them all with SIGSTOP to the process
 * group and resume them with SIGCONT. Prints "ready" once every child is in its
 * cgroup. SIGTERM to the parent kills and reaps the children, then the parent
 * ends; every process ends after LIFETIME_S seconds anyway, or when the parent
 * does.
 *
 * usage: ticker DIR COUNT PERIOD_MS LIFETIME_S [PREFIX SUFFIX]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stopping;

static void on_term(int signo)
{
	(void)signo;
	stopping = 1;
}

static int join_cgroup(const char *dir, const char *prefix, const char *suffix, int index)
{
	char path[4096];
	FILE *procs;
	int ok;

	snprintf(path, sizeof(path), "%s/%s%04d%s/cgroup.procs", dir, prefix, index, suffix);
	procs = fopen(path, "w");
	if (!procs) {
		perror(path);
		return -1;
	}
	ok = fprintf(procs, "%d\n", getpid()) > 0;
	ok &= fclose(procs) == 0;
	if (!ok)
		perror(path);
	return ok ? 0 : -1;
}

static void kill_all(pid_t *children, long count)
{
	for (long i = 0; i < count; i++)
		kill(children[i], SIGKILL);
	while (wait(NULL) > 0)
		;
}

static void tick(long period_ms, long lifetime_s)
{
	struct timespec nap = { period_ms / 1000, (period_ms % 1000) * 1000000L };
	struct timespec start, now;

	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		nanosleep(&nap, NULL);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec - start.tv_sec < lifetime_s);
}

int main(int argc, char **argv)
{
	struct sigaction term = { .sa_handler = on_term };  /* no SA_RESTART: wait() returns */
	int ready[2];
	pid_t *children;
	long count, period_ms, lifetime_s, joined = 0;
	char byte;

	if ((argc != 5 && argc != 7) || (count = atol(argv[2])) <= 0 || count > 9999 ||
	    (period_ms = atol(argv[3])) <= 0 || (lifetime_s = atol(argv[4])) <= 0) {
		fprintf(stderr, "usage: ticker DIR COUNT PERIOD_MS LIFETIME_S [PREFIX SUFFIX]\n");
		return 2;
	}
	children = calloc(count, sizeof(*children));
	if (!children || pipe(ready)) {
		perror("ticker");
		return 1;
	}
	for (long i = 0; i < count; i++) {
		pid_t child = fork();

		if (child < 0) {
			perror("fork");
			kill_all(children, i);
			return 1;
		}
		if (child == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() == 1)
				_exit(1);
			close(ready[0]);
			byte = join_cgroup(argv[1], argc == 7 ? argv[5] : "svc",
					   argc == 7 ? argv[6] : ".service", (int)i) == 0 ? 'y' : 'n';
			if (write(ready[1], &byte, 1) != 1)
				_exit(1);
			close(ready[1]);
			if (byte != 'y')
				_exit(1);
			tick(period_ms, lifetime_s);
			_exit(0);
		}
		children[i] = child;
	}
	close(ready[1]);
	while (joined < count && read(ready[0], &byte, 1) == 1) {
		if (byte != 'y') {
			fprintf(stderr, "ticker: a child could not join its cgroup\n");
			kill_all(children, count);
			return 1;
		}
		joined++;
	}
	if (joined < count) {
		fprintf(stderr, "ticker: children ended before joining their cgroups\n");
		kill_all(children, count);
		return 1;
	}
	sigaction(SIGTERM, &term, NULL);
	printf("ready\n");
	fflush(stdout);
	while (!stopping) {
		if (wait(NULL) < 0 && errno != EINTR)
			return 0;  /* every child ended */
	}
	kill_all(children, count);
	return 0;
}

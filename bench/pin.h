/* Pin the calling process to one CPU, or exit: the loads in bench/ and their tests share it. */
#ifndef GSENDER_PIN_H
#define GSENDER_PIN_H

#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

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

#endif

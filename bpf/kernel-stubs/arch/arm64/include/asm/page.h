/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * gsender-bcc's stand-in for arm64's page header: BCC's helpers.h sizes perf
 * buffers in PAGE_SIZE units (the program has none). An arm64 kernel is built
 * with 4, 16 or 64 KiB pages, so gsender_bcc.program passes the running
 * kernel's page size (sysconf) as -DGSENDER_PAGE_SIZE.
 */
#ifndef GSENDER_STUB_ASM_PAGE_H
#define GSENDER_STUB_ASM_PAGE_H
#ifndef GSENDER_PAGE_SIZE
#error "GSENDER_PAGE_SIZE is not given: gsender_bcc passes it as a -D flag"
#endif
#define PAGE_SIZE (GSENDER_PAGE_SIZE + 0UL)
#endif

/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * gsender-bcc's stand-in for x86's page header: BCC's helpers.h sizes perf
 * buffers in PAGE_SIZE units (the program has none). x86-64 base pages are
 * always 4 KiB.
 */
#ifndef GSENDER_STUB_ASM_PAGE_H
#define GSENDER_STUB_ASM_PAGE_H
#define PAGE_SHIFT 12
#define PAGE_SIZE (1UL << PAGE_SHIFT)
#endif

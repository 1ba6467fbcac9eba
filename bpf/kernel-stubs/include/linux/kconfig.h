/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * gsender-bcc's stand-in for a kernel tree's configuration header. BCC
 * force-includes include/linux/kconfig.h of the tree it compiles against, and
 * its helpers.h refuses to build unless CONFIG_BPF_SYSCALL is defined. No
 * other option is used: the program reads tracepoint arguments and fields
 * located through BTF or tracefs, never a type that depends on the kernel's
 * configuration.
 */
#ifndef GSENDER_STUB_KCONFIG_H
#define GSENDER_STUB_KCONFIG_H
#define CONFIG_BPF_SYSCALL 1
#endif

/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * gsender-bcc's stand-in for the kernel's integer type names, for BCC's own
 * headers and the structs it generates from tracefs formats. Both supported
 * architectures (x86_64 and arm64) are LP64: char 8 bits, short 16, int 32,
 * long and long long 64, and so is the BPF target.
 */
#ifndef GSENDER_STUB_TYPES_H
#define GSENDER_STUB_TYPES_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef signed short __s16;
typedef unsigned short __u16;
typedef signed int __s32;
typedef unsigned int __u32;
typedef signed long long __s64;
typedef unsigned long long __u64;

typedef __s8 s8;
typedef __u8 u8;
typedef __s16 s16;
typedef __u16 u16;
typedef __s32 s32;
typedef __u32 u32;
typedef __s64 s64;
typedef __u64 u64;

/* Byte-order annotated names: plain integers of the same width here. */
typedef __u16 __le16;
typedef __u16 __be16;
typedef __u32 __le32;
typedef __u32 __be32;
typedef __u64 __le64;
typedef __u64 __be64;
/* 64-bit fields of the BPF UAPI are 8-byte aligned on every architecture. */
typedef __u64 __aligned_u64 __attribute__((aligned(8)));
typedef __s64 __aligned_s64 __attribute__((aligned(8)));
typedef __u16 __sum16;
typedef __u32 __wsum;

/* POSIX-style names that tracefs formats use for fields. */
typedef int pid_t;
typedef unsigned int uid_t;
typedef unsigned int gid_t;
typedef unsigned long size_t;
typedef long ssize_t;
typedef long long loff_t;
typedef unsigned long uintptr_t;
typedef _Bool bool;
#define true 1
#define false 0

#endif

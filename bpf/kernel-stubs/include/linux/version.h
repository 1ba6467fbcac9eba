/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * gsender-bcc's stand-in for the kernel's version header. BCC's helpers.h
 * stores LINUX_VERSION_CODE in the program's "version" section and compares it
 * with KERNEL_VERSION(). gsender_bcc.program passes the running kernel's
 * version, read from uname, as -DLINUX_VERSION_CODE.
 */
#ifndef GSENDER_STUB_VERSION_H
#define GSENDER_STUB_VERSION_H
/* major.minor.patch in one number, one byte each below the major; the patch saturates at 255. */
#define KERNEL_VERSION(major, minor, patch) \
	(((major) << 16) | ((minor) << 8) | ((patch) > 255 ? 255 : (patch)))
#ifndef LINUX_VERSION_CODE
#error "LINUX_VERSION_CODE is not given: gsender_bcc passes it as a -D flag"
#endif
#endif

/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/* gsender-bcc: BCC's helpers.h includes this path; nothing in it is used (bpf/runqlat.h has its own floor_log2). */

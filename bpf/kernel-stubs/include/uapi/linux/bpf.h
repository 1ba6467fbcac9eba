/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/* gsender-bcc: BCC force-includes its own full copy of the BPF UAPI (/virtual/include/bcc/bpf.h) first; its helpers.h then includes this path, which only has to exist. */

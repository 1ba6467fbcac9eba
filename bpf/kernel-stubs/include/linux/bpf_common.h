/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/* gsender-bcc: BCC's own copy of the BPF UAPI includes this file, but needs nothing from it: it defines every instruction class it names itself. */

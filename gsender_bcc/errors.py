"""Exit codes (sysexits.h) and the one exception the command line turns into a one-line message."""

EX_OK = 0
EX_USAGE = 64        # a bad command line
EX_UNAVAILABLE = 69  # the host lacks something: headers, BCC, tracefs, a kernel feature
EX_NOPERM = 77       # not privileged enough to load BPF programs
EX_CONFIG = 78       # the configuration is invalid


class AgentError(Exception):
    """A problem the operator must fix; the message says what and how."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

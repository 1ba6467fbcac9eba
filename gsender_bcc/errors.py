"""The one exception type the command line turns into a one-line message and an exit code."""

import os


class AgentError(Exception):
    """A problem the operator must fix; the message says what and how."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


EX_CONFIG = 78
EX_UNAVAILABLE = 69
EX_NOPERM = 77
EX_OSFILE = getattr(os, "EX_OSFILE", 72)

"""Errors a user can act on: printed as one line, exit code 2, never a traceback."""


class UserError(Exception):
    """Bad input or an environment problem the user can fix; the message says what to do."""


EXIT_USAGE = 2

"""Error types the CLI turns into one-line messages and exit codes."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, unimportable factory). Exit code 2."""

    exit_code = 2


class StageFailed(Exception):
    """A stage ran but its result failed a check the user asked for (e.g. export parity). Exit code 1."""

    exit_code = 1

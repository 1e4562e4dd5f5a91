"""One exception type for bad user input, so entry points can print one line instead of a traceback."""


class EvoMergeInputError(ValueError):
    """Bad input (a file, a record, a config key): the message names it and says what is wrong."""

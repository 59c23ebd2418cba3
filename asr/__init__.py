"""DeepSpeech2-style speech recognition with its whole life cycle tracked in MLflow."""


class UserError(Exception):
    """A problem the user can fix (bad input, missing data or model): the CLI prints it as one line, no traceback."""

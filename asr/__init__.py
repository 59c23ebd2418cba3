"""DeepSpeech2-style speech recognition with its whole life cycle tracked in MLflow."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries bury the point in paragraphs), or its type name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class UserError(Exception):
    """A problem the user can fix (bad input, missing data or model): the CLI prints it as one line, no traceback."""

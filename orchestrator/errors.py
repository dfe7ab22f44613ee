"""Errors that end up as one line on a terminal, never as a traceback."""
import contextlib


class PolyllamaError(Exception):
    """Base for every error the user should read as one line."""


class FormatError(PolyllamaError):
    """A model or tokenizer file is missing, malformed or unsupported."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@contextlib.contextmanager
def opening(path):
    """An OSError while opening or reading `path` becomes the one line every reader prints."""
    try:
        yield
    except FileNotFoundError:
        raise FormatError(path, "cannot open: no such file") from None
    except IsADirectoryError:
        raise FormatError(path, "cannot open: is a directory") from None
    except OSError as e:
        raise FormatError(path, f"cannot open: {e.strerror}") from None


class UsageError(PolyllamaError):
    """A flag, option or matrix entry is wrong."""


def first_error(e) -> str:
    """A pydantic ValidationError as one line: where, then what."""
    first = e.errors()[0]
    return f"{'.'.join(map(str, first['loc'])) or '?'}: {first['msg']}"

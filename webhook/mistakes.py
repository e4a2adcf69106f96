"""Set-up mistakes (a file that can't be used, a port in use, a bad setting) said as one line each."""

import errno

# What the operating system's words mean for a path, where they alone leave a person guessing.
_MEANINGS = {
    errno.EPERM: "an immutable file or directory? lsattr shows it",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "it is a file, not a directory",
}


class SetupError(Exception):
    """A mistake in how the program was set up, as one line: what is wrong and what to do. The CLI
    prints it without a traceback and exits 2."""


def os_problem(error: OSError) -> str:
    """What the operating system said, with the path it said it about: `certs/tls.key: Is a directory`."""
    why = error.strerror or str(error) or type(error).__name__
    meaning = _MEANINGS.get(error.errno or 0)
    if meaning:
        why = f"{why} ({meaning})"
    return f"{error.filename}: {why}" if error.filename is not None else why

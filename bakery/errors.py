"""The one exception users see: a short message, an optional hint."""


class BakeryError(Exception):
    """An error that is the user's to fix (bad input, missing tool, refused plan).

    ``main()`` prints ``message`` (and ``hint`` when set) and exits non-zero; the
    traceback is shown only with ``--debug``.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class RecipeError(BakeryError):
    """The recipe does not load or does not match the schema."""

    exit_code = 2


class PlanRefused(BakeryError):
    """The bake plan (untrusted input) failed validation; nothing was run."""

    exit_code = 3


class NoImageForFamily(BakeryError):
    """A multi-ISA IR image (an index) has no image for the ISA family asked for."""


class CommandFailed(BakeryError):
    """An external tool exited non-zero; carries the command line and its output tail."""

    def __init__(self, argv, returncode: int, output: str = "", hint: str | None = None):
        import shlex

        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        cmd = shlex.join(str(a) for a in self.argv)
        if len(cmd) > 400:
            cmd = cmd[:400] + " ..."
        tail = "\n".join(output.rstrip().splitlines()[-25:])
        msg = f"command failed (exit {returncode}): {cmd}"
        if tail:
            msg += "\n" + tail
        super().__init__(msg, hint)

"""Error types the CLI turns into one-line messages and exit codes, and where an unexpected one came from."""

from __future__ import annotations

import sysconfig
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, unimportable factory). Exit code 2."""

    exit_code = 2


class StageFailed(Exception):
    """A stage ran but its result failed a check the user asked for (e.g. export parity). Exit code 1."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, whitespace collapsed, at most ``limit`` characters:
    what a one-line error quotes of a cause raised deep inside a library or the user's code."""
    return " ".join((str(exc).strip().splitlines() or [""])[0].split())[:limit]


# Code that is not the user's: edgeslim itself (``stages`` lives beside ``pipeline`` in a checkout,
# inside it when installed) and whatever is installed or ships with Python.
_OWN_CODE = (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "stages")
_LIBRARY_ROOTS = tuple(
    {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib", "stdlib", "platstdlib")}
)


def _under(path: Path, roots: tuple[Path, ...]) -> Path | None:
    return next((root for root in roots if path.is_relative_to(root)), None)


def culprit(exc: BaseException) -> tuple[str, bool]:
    """Where an unexpected exception was raised, for its one-line message, and whether that is the
    user's own code (their model's ``forward``, their data factory: the input is at fault).

    Returns e.g. ``("at mymodel.py:42 in Block.forward; ", True)`` or ``("in torch_pruning
    (dependency.py:311); ", False)``; ``("", False)`` when edgeslim itself raised it."""
    tb = exc.__traceback__
    innermost = None
    while tb is not None:
        innermost = tb
        tb = tb.tb_next
    if innermost is None:
        return "", False
    frame = innermost.tb_frame
    path = Path(frame.f_code.co_filename).resolve()
    if _under(path, _OWN_CODE):
        return "", False
    library = _under(path, _LIBRARY_ROOTS)
    if library is not None:
        relative = path.relative_to(library).parts
        package = relative[0].removesuffix(".py") if relative else path.stem
        return f"in {package} ({path.name}:{innermost.tb_lineno}); ", False
    owner = frame.f_locals.get("self")
    function = frame.f_code.co_name
    if owner is not None and any(
        c.__name__ == "Module" and c.__module__.startswith("torch.nn") for c in type(owner).__mro__
    ):
        function = f"{type(owner).__name__}.{function}"  # the part of the user's model that failed
    try:
        shown = path.relative_to(Path.cwd())
    except ValueError:
        shown = path
    return f"at {shown}:{innermost.tb_lineno} in {function}; ", True

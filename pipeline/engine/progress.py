"""Rich progress bars on stderr, so stdout stays clean for tables and JSON."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def silence() -> None:
    """No bars from this process (the other ranks of a distributed run: rank 0 shows the progress)."""
    global console
    console = Console(stderr=True, quiet=True)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )

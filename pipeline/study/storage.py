"""Where a study lives, and how several workers share it without losing or duplicating a trial.

The study is Optuna's RDB storage: by default a SQLite file in the search folder (kill the search,
rerun it, it resumes), or any SQLAlchemy URL (``postgresql://user@host/db``) that workers on other
machines reach too. Two rules keep the trial count exact with any number of workers:

- **Claims are serialized.** A worker counts the study's trials and asks for a new one while holding
  one lock (a file lock beside a SQLite study, a PostgreSQL advisory lock otherwise), so two workers
  never both take the last slot of the budget.
- **A dead worker's trial is given back.** Each trial records its worker (host and pid); a worker
  that starts finds the RUNNING trials of its own host whose process is gone (killed, machine
  restarted), marks them failed (``interrupted``) and queues their settings again, so they are redone
  (their finished stages are reused from the trial folder's cache) and never counted twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from edgeslim.errors import UserError

WORKER_ATTR = "worker"  # "host:pid" of the process that runs the trial
INTERRUPTED_ATTR = "interrupted"  # a trial whose process died or was stopped: redone, not counted
REPEAT_ATTR = "repeat_of"  # a trial whose settings an earlier complete trial ran: its result, free, not counted
STUDY_DB = "study.db"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def storage_url(search_dir: Path, storage: str | None) -> str:
    if storage is None:
        return f"sqlite:///{(search_dir / STUDY_DB).resolve()}"
    if storage.startswith("postgresql://"):  # SQLAlchemy's default driver is psycopg2; we ship psycopg 3
        storage = "postgresql+psycopg://" + storage.removeprefix("postgresql://")
    return storage


def open_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Open (creating its tables on first use) the study storage. Workers starting together race to
    create the tables: on SQLite they take turns under a file lock beside the database; on a server
    the losers see a duplicate-key error (SQLite's form of it: "table … already exists") and simply
    open the tables a moment later."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            with _sqlite_lock(url):
                return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        except ModuleNotFoundError as exc:
            raise UserError(
                f"search --storage {_shown(url)}: its database driver is not installed ({exc.name})"
            ) from None
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            racing = not isinstance(exc, OperationalError) or "already exists" in str(exc)
            if not racing or attempt == attempts - 1:  # unreachable server, bad credentials, not a database
                raise _cannot_open(url, exc) from None
            time.sleep(0.5 + attempt)  # another worker is creating the tables
        except Exception as exc:
            raise _cannot_open(url, exc) from None
    raise AssertionError("unreachable")


def _cannot_open(url: str, exc: Exception) -> UserError:
    cause = " ".join(str(exc).split())[:300]
    return UserError(f"search --storage {_shown(url)}: cannot open the study: {type(exc).__name__}: {cause}")


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):  # several local workers: wait for the writer instead of failing at once
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def _shown(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{scheme}://{user}@{rest.split('@', 1)[1]}"
    return url


@contextlib.contextmanager
def _sqlite_lock(url: str, required: bool = False) -> Iterator[None]:
    """The file lock beside an SQLite study (nothing for a server; nothing where it cannot be made,
    unless ``required``)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    try:
        handle = open(Path(url.split(":///", 1)[1] + ".claim.lock"), "a")  # noqa: SIM115 - held across the yield
    except OSError:
        if required:
            raise
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def claim_lock(url: str, study_name: str, storage: optuna.storages.RDBStorage) -> Iterator[None]:
    """Hold the study's claim lock (see the module docstring)."""
    if url.startswith("sqlite"):
        with _sqlite_lock(url, required=True):
            yield
        return
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(f"edgeslim:{study_name}".encode()).digest()[:8], "big", signed=True)
    with storage.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def counted(trial: FrozenTrial) -> bool:
    """Trials that use the budget: finished ones (complete, pruned, failed in the pipeline) and running
    ones; not those interrupted (they are queued again), repeats (nothing ran) nor queued ones (they
    are not started)."""
    if trial.user_attrs.get(REPEAT_ATTR) is not None:
        return False
    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get(INTERRUPTED_ATTR)
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def give_back_dead_trials(study: optuna.Study) -> list[int]:
    """Mark this host's RUNNING trials whose process is gone as interrupted and queue their settings
    again; returns their numbers. Call under the claim lock."""
    host = socket.gethostname()
    given_back = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get(WORKER_ATTR, ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        interrupt(study, trial)
        given_back.append(trial.number)
    return given_back


def interrupt(study: optuna.Study, trial: FrozenTrial) -> None:
    """Record a trial that did not finish (its process was stopped) and queue its settings again."""
    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    if trial.params:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)

"""Worker processes that fail fast: the one way facekd runs work on several processes.

``multiprocessing.Pool`` restarts a worker whose initializer raises, forever, and waits
forever for a task whose worker was killed; either hangs a run. Here the initializer's
error is kept and raised by every task, a task's error becomes one :class:`FacekdError`
naming the work and the reason, and a worker that dies (killed, out of memory) breaks
the pool at once (``concurrent.futures``); the remaining work is cancelled.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, TypeVar

from facekd.errors import FacekdError

T = TypeVar("T")
R = TypeVar("R")

_INIT_ERROR: list[str] = []  # in a worker: why its initializer failed


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _guarded_init(what: str, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    _INIT_ERROR.clear()
    if initializer is None:
        return
    try:
        initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001 - kept and raised by every task, see _guarded_task
        message = str(exc) if isinstance(exc, FacekdError) else _reason(exc)
        _INIT_ERROR.append(f"{what}: a worker could not start: {message}")


def _guarded_task(what: str, fn: Callable[[Any], Any], item: Any) -> Any:
    if _INIT_ERROR:
        raise FacekdError(_INIT_ERROR[0])
    try:
        return fn(item)
    except FacekdError:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear error on the main side
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise FacekdError(f"{what}: a worker failed: {_reason(exc)} (at {where.filename}:{where.lineno})") from None


def run_in_workers(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    *,
    what: str,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    ordered: bool = True,
) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` spawned processes, results as they come.

    Args:
        fn: A module-level function (it is pickled by name).
        items: The work, one picklable item per call.
        workers: Processes to start.
        what: Names the work in errors, e.g. "align /data/lfw".
        initializer: Run once in each worker before its first item.
        initargs: Its arguments.
        ordered: Results in the order of ``items`` (else in order of completion).

    Raises:
        FacekdError: The first error of any worker (initializer or task), or a worker
            that died; the rest of the work is cancelled.
    """
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_guarded_init,
                               initargs=(what, initializer, initargs))
    futures: list[Future] = []
    finished = False
    try:
        futures = [pool.submit(_guarded_task, what, fn, item) for item in items]
        if ordered:
            for fut in futures:
                yield fut.result()
        else:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finished = True
    except BrokenProcessPool as exc:
        raise FacekdError(f"{what}: a worker process died ({exc}); nothing was lost that a rerun cannot redo") from None
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:  # an error, or the caller stopped reading: do not wait for work in flight
            for fut in futures:
                fut.cancel()
            _stop(pool)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shuts the pool down without waiting for work in flight: its workers are killed."""
    processes = dict(getattr(pool, "_processes", None) or {})  # stdlib keeps no public handle
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes.values():
        if proc.is_alive():
            proc.terminate()
    for proc in processes.values():
        proc.join(timeout=5)

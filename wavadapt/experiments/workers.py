"""Independent steps of an experiment (fine-tuning runs, continual runs, probes) in worker processes.

On a CPU, small models train faster as one single-threaded process per core than as one process whose matmuls are
split across the cores (the tiny preset's are too small to share), so an experiment grid runs its independent
steps ``jobs`` at a time, each in a fresh process (spawned: forking a process that has run PyTorch's thread pools
can hang) with one thread. With ``jobs`` 1 they run here, in order, as before.
"""

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor


def _start_worker() -> None:
    """One thread, and wavadapt's warnings (a skipped file, a collapsing codebook) as the command line shows them."""
    import logging

    import torch

    from wavadapt.errors import WarningLines

    torch.set_num_threads(1)
    logging.getLogger("wavadapt").addHandler(WarningLines())


def run_steps(steps: Sequence[tuple[Callable, tuple]], jobs: int = 1,
              done: Callable[[int], None] | None = None) -> list:
    """``[function(*args) for function, args in steps]``, ``jobs`` at a time in worker processes (functions and
    arguments must pickle); ``done(i)`` is called as step i finishes. The first failure is raised once the steps
    under way have ended."""
    if jobs <= 1 or len(steps) <= 1:
        results = []
        for i, (function, args) in enumerate(steps):
            results.append(function(*args))
            if done is not None:
                done(i)
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(steps)), mp_context=context, initializer=_start_worker) as pool:
        futures = [pool.submit(function, *args) for function, args in steps]
        if done is not None:
            for i, future in enumerate(futures):
                future.add_done_callback(lambda f, i=i: done(i) if not f.cancelled() and f.exception() is None
                                         else None)
        try:
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the queued steps never start
            raise

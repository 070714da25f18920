"""CPU time per region of a training step, shared by the benchmarks.

Forward pre-hooks mark when each named module starts; the step marks its own phases (``backward``,
``optimizer`` ...) with :meth:`Regions.mark`. The CPU time between two marks belongs to the first.
"""

import itertools
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager

from torch import nn


class Regions:
    def __init__(self, modules: Iterable[tuple[nn.Module, str]]):
        self.modules = list(modules)
        self.names = [name for _, name in self.modules]
        self.current = "input"
        self.marks: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        self.current = name
        self.marks.append((name, time.process_time()))

    @contextmanager
    def hooks(self):
        """Mark the named modules' forwards inside the block (one step)."""
        self.marks = []
        handles = [module.register_forward_pre_hook(lambda module, args, name=name: self.mark(name))
                   for module, name in self.modules]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def seconds(self) -> Counter:
        """CPU seconds per region of the last step."""
        spent = Counter()
        for (name, start), (_, end) in itertools.pairwise(self.marks):
            spent[name] += end - start
        return spent

"""`python -m wavadapt` (and `torchrun -m wavadapt ...`): the same as the `wavadapt` command."""

from wavadapt.cli import main

main()

"""Stop a run cleanly when the cluster asks: SIGTERM (SLURM, Kubernetes, torchrun), SIGUSR1 (SLURM's warning before
a preemption, ``--signal=USR1@90``) and SIGINT (Ctrl-C) only set a flag; train.py finishes the update, saves, exits."""
from __future__ import annotations

import logging
import signal
from types import FrameType

__all__ = ['STOP_SIGNALS', 'GracefulStop', 'ignore_stop_signals']

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
_logger = logging.getLogger(__name__)


class GracefulStop:
    """Within ``with GracefulStop() as stop:``, ``stop.signal`` is the first stop signal received (None before).

    A repeated signal changes nothing (the checkpoint being written stays atomic), except a second Ctrl-C, which
    raises ``KeyboardInterrupt`` at once for a user who does not want to wait for the update to finish."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
            _logger.warning(f'{self.signal.name} received: stopping after the current update, with a checkpoint')
        elif signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            _logger.warning(f'{signal.Signals(signum).name} received: already stopping')

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention: 130 SIGINT, 143 SIGTERM, 138 SIGUSR1."""
        return 128 + int(self.signal or 0)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of data loader workers: SLURM and Ctrl-C signal every process, and a worker that dies
    would break the batch the main process is finishing before it saves; the main process shuts workers down."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)

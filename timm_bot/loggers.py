"""Run curves where users look: TensorBoard event files in the run folder and/or Weights & Biases (as timm's
``--log-wandb``), on rank 0; a resumed run continues the same curves without logging a step twice."""
import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ['MetricsLogger', 'check_logger_extras']

_logger = logging.getLogger(__name__)
WANDB_STATE = 'wandb-run.json'  # the run folder's W&B run id and the last step it logged


def _import(module: str, extra: str, what: str) -> Any:
    try:
        return __import__(module, fromlist=['_'])
    except ImportError:
        raise ImportError(f"{what} needs the {extra} package: pip install 'timm-bot[{extra}]'") from None


def check_logger_extras(tensorboard: bool = False, wandb: bool = False) -> None:
    """A one-line ImportError naming the extra to install, before a run writes anything."""
    if tensorboard:
        _import('torch.utils.tensorboard', 'tensorboard', 'log_tensorboard')
    if wandb:
        _import('wandb', 'wandb', 'log_wandb')


class MetricsLogger:
    """``log(step, {name: value})`` to TensorBoard (``run_dir/events.out.tfevents.*``) and/or W&B; a no-op when both
    are off. ``step`` is the run's optimizer update count. ``resume_step``: the step of the checkpoint a resumed run
    starts from; TensorBoard hides the later points of the interrupted session (``purge_step``), W&B resumes the same
    run (its id is kept in ``run_dir/wandb-run.json``) and skips the steps it logged already."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = False, wandb: bool = False,
                 project: str | None = None, name: str | None = None, config: dict | None = None,
                 resume_step: int | None = None):
        check_logger_extras(tensorboard, wandb)
        self.run_dir, self.writer, self.run = Path(run_dir), None, None
        self.wandb_done = self.wandb_last = -1  # W&B steps logged before this session, and by now
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)
        if wandb:
            self.run = self._init_wandb(project, name or self.run_dir.name, config or {})

    def _init_wandb(self, project: str | None, name: str, config: dict) -> Any:
        """The run folder's W&B run, resumed (or a new one); offline when there is no W&B login."""
        import wandb
        state_file = self.run_dir / WANDB_STATE
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}  # none yet: a new W&B run
        self.wandb_done = self.wandb_last = state.get('step', -1)
        kwargs = dict(project=project, name=name, id=state.get('id'), resume='allow' if state else None, config=config,
                      dir=os.environ.get('WANDB_DIR') or str(self.run_dir))
        try:
            run = wandb.init(**kwargs)
        except wandb.errors.UsageError as e:
            if 'api key' not in str(e).lower():
                raise
            run = wandb.init(mode='offline', **kwargs)
            _logger.info(f'W&B: not logged in: logging offline; upload later with: wandb sync {run.dir}/..')
        self._save_wandb_state(run.id, self.wandb_done)
        return run

    def _save_wandb_state(self, run_id: str, step: int) -> None:
        tmp = self.run_dir / (WANDB_STATE + '.tmp')
        tmp.write_text(json.dumps({'id': run_id, 'step': step}) + '\n')
        os.replace(tmp, self.run_dir / WANDB_STATE)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Scalars at ``step``; None values are left out. Flushed, so an interruption loses no logged point."""
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, global_step=step)
            self.writer.flush()
        if self.run is not None and step > self.wandb_done:  # an earlier session logged steps <= wandb_done
            self.run.log(values, step=step)
            if step > self.wandb_last:
                self.wandb_last = step
                self._save_wandb_state(self.run.id, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.run is not None:
            self.run.finish()

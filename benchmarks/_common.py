"""Helpers shared by the benchmark scripts: machine description, medians, interleaved timing, data subsets.

Not a public module: the scripts are run as ``python benchmarks/NAME.py`` (their folder is then on ``sys.path``).
"""
from __future__ import annotations

import datetime
import io
import json
import os
import platform
import random
import statistics
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'cifar10'
DEFAULT_RESULTS = REPO / 'benchmarks' / 'results'


def add_timing_args(parser: Any, out_name: str, smoke_help: str) -> None:
    """``--threads``, ``--out`` and ``--smoke``, shared by the timing scripts."""
    parser.add_argument('--threads', type=int, default=1,
                        help='torch intra-op threads (for every loop compared; 1 is stable on a shared machine, '
                             '0 keeps torch\'s default)')
    parser.add_argument('--out', default=str(DEFAULT_RESULTS / out_name))
    parser.add_argument('--smoke', action='store_true', help=smoke_help)


def apply_threads(threads: int) -> None:
    """Pin torch's intra-op threads (0: keep torch's default)."""
    if threads > 0:
        import torch
        torch.set_num_threads(threads)


def machine_info() -> dict[str, Any]:
    """CPU model, core count, library versions, date: what the README records next to each result."""
    import timm
    import torch
    cpu = platform.processor() or 'unknown'
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float('nan')
    return {'cpu': cpu, 'cores': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
            'torch': torch.__version__, 'timm': timm.__version__, 'python': platform.python_version(),
            'date': datetime.datetime.now().isoformat(timespec='seconds'), 'loadavg_1min_at_start': round(load, 2)}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """'min..max' of a list of numbers, for the tables."""
    return f'{min(values):.3g}..{max(values):.3g}' if values else '-'


def write_json(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(obj, indent=2, default=str) + '\n')
    os.replace(tmp, path)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_subset_tar(source: str | os.PathLike, dest: str | os.PathLike, per_class: int | None,
                     seed: int = 0) -> Path:
    """Copy ``per_class`` randomly chosen images of every class of the tar ``source`` into the tar ``dest``.

    The JPEG bytes are copied unchanged (no re-encoding, so decode cost and pixels are those of the source), with
    a directory member per class as :func:`timm_bot.data.write_image_folder` writes. ``per_class=None`` keeps all.
    An existing ``dest`` is reused as it is (delete it to rebuild).
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    rng = random.Random(seed)
    with tarfile.open(source) as src:
        by_class: dict[str, list[tarfile.TarInfo]] = {}
        for m in src.getmembers():
            if m.isfile():
                cls = Path(m.name).parent.name
                by_class.setdefault(cls, []).append(m)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + '.partial')
        with tarfile.open(tmp, 'w', format=tarfile.USTAR_FORMAT) as out:
            for cls in sorted(by_class):
                members = sorted(by_class[cls], key=lambda m: m.name)
                if per_class is not None:
                    members = sorted(rng.sample(members, min(per_class, len(members))), key=lambda m: m.name)
                d = tarfile.TarInfo(cls)
                d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
                out.addfile(d)
                for m in members:
                    payload = src.extractfile(m).read()
                    ti = tarfile.TarInfo(f'{cls}/{Path(m.name).name}')
                    ti.size, ti.mode, ti.mtime = len(payload), 0o644, 0
                    out.addfile(ti, io.BytesIO(payload))
    os.replace(tmp, dest)
    return dest


def write_subset_dataset(data_dir: str | os.PathLike, dest_dir: str | os.PathLike, train_per_class: int | None,
                         val_per_class: int | None, seed: int = 0) -> Path:
    """``dest_dir/{train,val}.tar``: class-balanced random subsets of ``data_dir/{train,val}.tar``."""
    data_dir, dest_dir = Path(data_dir), Path(dest_dir)
    for split, n in (('train', train_per_class), ('val', val_per_class)):
        src = data_dir / f'{split}.tar'
        if not src.is_file():
            raise FileNotFoundError(f'{src} not found: --data-dir must hold train.tar and val.tar of class folders')
        write_subset_tar(src, dest_dir / f'{split}.tar', n, seed)
    return dest_dir

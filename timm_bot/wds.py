"""``wds/ROOT``: WebDataset tar shards streamed in an order set by (seed, epoch) alone, so a mid-epoch resume is exact:
the streamed counterpart of ``ResumableSampler`` + ``SeededTransformDataset``. Shards are found as timm's ``ReaderWds``
finds them (a brace pattern, timm's ``_info.json``) or in a folder; the webdataset library reads them."""
import io
import itertools
import json
import logging
import multiprocessing
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from timm.data.readers.targets import get_field
from torch.utils.data import IterableDataset, get_worker_info

from timm_bot.data import _SPLITS, BadImageError, LabelMap, decode_image, split_synonyms
from timm_bot.sampler import sample_seed, seeded_call

__all__ = ['WdsImageDataset', 'create_wds_dataset', 'resolve_shards', 'split_chunks', 'apportion', 'round_robin']

_logger = logging.getLogger(__name__)
_EXTRA = "pip install 'timm-bot[webdataset]'"
_META = re.compile(r'__[^/]*__($|/)')  # members webdataset skips
_URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]+:')  # pipe:, s3://, https://, ... (not a Windows drive letter)
Chunk = tuple[int, int, int]  # (shard, part, parts): the shard's samples i with i % parts == part


def _import_wds() -> Any:
    try:
        import webdataset
    except ImportError:
        raise ImportError(f'wds/ sources need the webdataset library: {_EXTRA}') from None
    return webdataset


def split_chunks(chunks: list[Chunk], n: int, k: int) -> list[Chunk]:
    """Member ``k`` of ``n``'s chunks, dealt round-robin; each chunk is cut into interleaved parts when fewer than n."""
    cuts = -(-n // max(len(chunks), 1))
    return [(shard, part + parts * j, parts * cuts) for shard, part, parts in chunks for j in range(cuts)][k::n]


def apportion(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights``: largest remainders first, then the lower index."""
    whole = sum(weights)
    quotas = [total * w // whole for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))[:total - sum(quotas)]:
        quotas[i] += 1
    return quotas


def round_robin(quotas: list[int]) -> list[int]:
    """The worker delivering each batch: torch's DataLoader asks its workers in turn, skipping finished ones."""
    left, order = list(quotas), []
    while any(left):
        for worker, n in enumerate(left):
            if n:
                order.append(worker)
                left[worker] -= 1
    return order


def _is_pattern(path: str) -> bool:
    return '{' in path or '::' in path or bool(re.search(r'\.(tar|tgz|tar\.gz)$', path))


def _read_info(root: str) -> dict | None:
    """timm's ``_info.json`` (or ``info.json``): ``{'splits': {NAME: {'filenames': [...], 'shard_lengths': [...]}}}``"""
    for name in ('_info.json', 'info.json'):
        if _URL.match(root):
            try:
                with _import_wds().gopen(f'{root.rstrip("/")}/{name}') as f:
                    return json.load(f)
            except Exception:  # absent: the shards are found otherwise
                continue
        elif (Path(root) / name).is_file():
            return json.loads((Path(root) / name).read_text())
    return None


def resolve_shards(root: str, split: str) -> tuple[list[str], list[int] | None]:
    """``split``'s shard paths or URLs and their sample counts (when timm's ``_info.json`` gives them). ``split`` may
    be a brace pattern inside ``root`` (timm's ``--train-split 'train-{0000..0099}.tar'``); ``root`` may be a pattern
    itself (``{split}`` in it is replaced); else ``root/_info.json``, ``root/SPLIT/*.tar`` or ``root/SPLIT-*.tar``."""
    expand = _import_wds().shardlists.expand_urls
    if _is_pattern(split):
        return expand(f'{root.rstrip("/")}/{split}' if root else split), None
    if _is_pattern(root):
        if '{split}' not in root:
            _logger.warning(f'wds/{root} names its shards: reading them for every split ({split} too)')
        return expand(root.replace('{split}', split)), None
    if (info := _read_info(root)) is not None:
        splits = info.get('splits') or {}
        name = next((n for n in split_synonyms(split) if n in splits), None)
        if name is None:
            raise ValueError(f'no "{split}" split in {root}/_info.json (found {", ".join(splits) or "none"})')
        return [f'{root.rstrip("/")}/{f}' for f in splits[name]['filenames']], splits[name].get('shard_lengths')
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f'wds/{root}: no such folder (expected a folder of .tar shards, a brace pattern such '
                                'as wds/shards/train-{0000..0099}.tar, or a folder with _info.json)')
    tars = sorted(folder.glob('*.tar'))
    for name in split_synonyms(split):
        named = [p for p in tars if re.fullmatch(rf'{re.escape(name)}([-_.].*)?\.tar', p.name)]
        if found := sorted(folder.glob(f'{name}/*.tar')) or named:
            return [str(p) for p in found], None
    others = sorted({n for p in tars for n in sum(_SPLITS, ()) if re.fullmatch(rf'{n}([-_.].*)?\.tar', p.name)})
    if others or not tars:
        raise FileNotFoundError(f'no "{split}" split in wds/{root} (looked for {"/, ".join(split_synonyms(split))}/ '
                                f'folders of .tar shards and {split}-*.tar; found {", ".join(others) or "no shards"})')
    _logger.warning(f'wds/{root} has no "{split}" split: reading all its {len(tars)} shards for every split')
    return [str(p) for p in tars], None


def _raw_label(data: bytes, target_key: str | None, where: str) -> Any:
    """The label of a ``.cls`` member, or field ``target_key`` of a ``.json`` sidecar (as timm's ReaderWds)."""
    if target_key is None:
        return int(data.decode().strip())
    meta = json.loads(data)
    try:
        return get_field(meta, target_key)
    except (KeyError, IndexError, TypeError):
        raise ValueError(f'{where}: no field {target_key!r} (target_key) in its .json; its fields: '
                         f'{", ".join(meta)}') from None


def scan_shard(path: str, target_key: str | None) -> tuple[int, list[Any], list[str]]:
    """(samples, raw labels, member names of the first sample) of a local shard, read from its tar headers and
    label members only, grouped by key as webdataset groups them."""
    base_plus_ext = _import_wds().tariterators.base_plus_ext
    label_member, count, labels, members, key = 'json' if target_key else 'cls', 0, [], [], None
    with tarfile.open(path) as tf:
        for info in tf:
            prefix, suffix = base_plus_ext(info.name) if info.isreg() and not _META.match(info.name) else (None, None)
            if prefix is None:
                continue
            if prefix != key:
                key, count = prefix, count + 1
                labels.append(None)
            members += [suffix.lower()] if count == 1 else []
            if suffix.lower() == label_member:
                labels[-1] = _raw_label(tf.extractfile(info).read(), target_key, f'sample {key!r} of {path}')
    return count, labels, members


class WdsImageDataset(IterableDataset):
    """``(image, label)`` samples of WebDataset shards, in an order fixed by (seed, epoch) for exact resume.

    Training: each epoch the shards are permuted by ``seed + epoch`` and dealt to the ranks, then to each rank's
    loader workers (shards are cut into interleaved parts when fewer than ranks or workers); each worker shuffles its
    stream in a buffer seeded by (seed, epoch, rank, worker) and delivers its share of the rank's
    ``batches_per_epoch`` (in proportion to its samples: a worker short of samples repeats its own, reshuffled).
    Sample i of batch j on rank r is augmented under ``sample_seed(seed, epoch, (j * world_size + r) * batch_size
    + i)``. ``set_epoch(epoch, start_batch)``: the workers read past the batches already trained, then go on exactly.
    Evaluation: every sample exactly once over the ranks and workers, in shard order."""

    def __init__(self, shards: list[str], shard_lengths: list[int], labels: LabelMap, classes: list[str], *,
                 input_key: str = 'jpg;png;webp', target_key: str | None = None, transform: Callable | None = None,
                 skip_bad_images: bool = False, root: str = ''):
        from timm.data.readers.reader_wds import SAMPLE_INITIAL_SIZE, SAMPLE_SHUFFLE_SIZE  # timm's buffer sizes
        self.shards, self.shard_lengths, self.labels = list(shards), list(shard_lengths), labels
        self.classes, self.num_classes, self.num_samples = list(classes), len(classes), sum(shard_lengths)
        self.input_key, self.target_key, self.root = input_key, target_key, root
        self.transform, self.skip_bad_images = transform, skip_bad_images
        self.shuffle_size, self.shuffle_initial = SAMPLE_SHUFFLE_SIZE, SAMPLE_INITIAL_SIZE
        self.batch_size, self.seed, self.rank, self.world_size, self.training = 1, 0, 0, 1, False
        self._epoch = multiprocessing.Value('q', 0)  # shared with persistent loader workers
        self._start_batch = multiprocessing.Value('q', 0)

    def configure(self, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                  training: bool = False) -> 'WdsImageDataset':
        """How the loader reads it: ``training``: shuffled, seeded, whole batches of ``batch_size`` (the loader's)."""
        self.batch_size, self.seed, self.training = batch_size, seed, training
        self.rank, self.world_size = rank, world_size
        if training and self.batches_per_epoch == 0:
            raise ValueError(f'{self.num_samples} samples make no batch of {batch_size} x {world_size} ranks: lower '
                             'batch_size or use more data.')
        return self

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Read ``epoch`` from its batch ``start_batch`` on (train.py's resume point), in every loader worker."""
        self._epoch.value, self._start_batch.value = epoch, start_batch

    @property
    def rank_samples(self) -> int:
        """Evaluation: the samples this rank reads (every sample exactly once over the ranks)."""
        chunks = split_chunks([(s, 0, 1) for s in range(len(self.shards))], self.world_size, self.rank)
        return sum(self._chunk_len(c) for c in chunks)

    @property
    def batches_per_epoch(self) -> int:
        """Training: whole global batches only, as ResumableSampler; evaluation: about (one partial batch a worker)."""
        if self.training:
            return self.num_samples // (self.batch_size * self.world_size)
        return -(-self.rank_samples // self.batch_size)

    def __len__(self) -> int:
        """Training: the samples left in the epoch (len(DataLoader): its batches left); evaluation: this rank's."""
        if self.training:
            return max(0, self.batches_per_epoch - self._start_batch.value) * self.batch_size
        return self.rank_samples

    def _chunk_len(self, chunk: Chunk) -> int:
        shard, part, parts = chunk
        return len(range(part, self.shard_lengths[shard], parts))

    def _read(self, chunks: list[Chunk]) -> Iterator[dict]:
        tarfile_samples = _import_wds().tariterators.tarfile_samples
        for shard, part, parts in chunks:
            yield from itertools.islice(tarfile_samples([{'url': self.shards[shard]}]), part, None, parts)

    def __iter__(self) -> Iterator[tuple[Any, int] | None]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if not self.training:
            rank_chunks = split_chunks([(s, 0, 1) for s in range(len(self.shards))], self.world_size, self.rank)
            return (self._sample(raw) for raw in self._read(split_chunks(rank_chunks, workers, worker)))
        return self._train_iter(worker, workers)

    def _train_iter(self, worker: int, workers: int) -> Iterator[tuple[Any, int] | None]:
        epoch, start = self._epoch.value, self._start_batch.value
        order = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        rank_chunks = split_chunks([(s, 0, 1) for s in order], self.world_size, self.rank)
        roles = [split_chunks(rank_chunks, workers, w) for w in range(workers)]
        counts = [sum(map(self._chunk_len, chunks)) for chunks in roles]
        if not sum(counts):
            raise ValueError(f'rank {self.rank} got no samples of wds/{self.root} in epoch {epoch}: use more shards')
        owner = round_robin(apportion(self.batches_per_epoch, counts))  # batch j of the epoch comes from owner[j]
        if start >= len(owner):
            return
        role = (owner[start] + worker) % workers  # a resumed loader's worker 0 serves the next batch
        done = owner[:start].count(role) * self.batch_size  # samples of its batches already trained: read, not decoded
        stream = itertools.islice(self._role_stream(roles[role], epoch, role), done, None)
        for j in (j for j in range(start, len(owner)) if owner[j] == role):
            position = (j * self.world_size + self.rank) * self.batch_size
            for i in range(self.batch_size):
                yield self._sample(next(stream), sample_seed(self.seed, epoch, position + i))

    def _role_stream(self, chunks: list[Chunk], epoch: int, role: int) -> Iterator[dict]:
        """The worker's samples, shuffled in timm's buffer; again (reshuffled) when its share needs more."""
        shuffle = _import_wds().filters.shuffle
        for lap in itertools.count():
            rng = random.Random(f'{self.seed}/{epoch}/{self.rank}/{role}/{lap}')  # str seeds are hash-independent
            empty = True
            for sample in shuffle(self.shuffle_size, self.shuffle_initial, rng=rng)(self._read(chunks)):
                empty = False
                yield sample
            if empty:  # counted samples that are not there: stop rather than loop forever
                raise BadImageError(f'the shards of wds/{self.root} hold fewer samples than counted (a stale '
                                    f'_info.json shard_lengths?): {[self.shards[c[0]] for c in chunks][:3]} gave none')

    def _sample(self, raw: dict, seed: int | None = None) -> tuple[Any, int] | None:
        where = f"sample {raw['__key__']!r} of {raw['__url__']}"
        ext = next((k for k in self.input_key.split(';') if k in raw), None)
        label = raw.get('json' if self.target_key else 'cls')
        if ext is None or label is None:
            members = ', '.join(k for k in raw if not k.startswith('__'))
            what = f'no {self.input_key} member (input_key)' if ext is None else 'no label member (target_key)'
            raise BadImageError(f'{where} has {what}; its members: {members}')
        try:
            target = self.labels(_raw_label(label, self.target_key, where), where)
        except ValueError as e:
            raise BadImageError(str(e)) from None  # one line, also through a loader worker
        img = decode_image(io.BytesIO(raw[ext]), 'RGB', self.skip_bad_images, name=lambda: f"{raw['__key__']}.{ext}",
                           where=f"in {raw['__url__']}")
        if img is None or self.transform is None:
            return None if img is None else (img, target)
        return (seeded_call(self.transform, img, seed) if seed is not None else self.transform(img)), target


def create_wds_dataset(root: str, split: str, transform: Callable | None = None, skip_bad_images: bool = False,
                       input_key: str | None = None, target_key: str | None = None,
                       class_map: str | None = None) -> WdsImageDataset:
    """``wds/ROOT`` [``split``]; local shards are scanned (tar headers and labels) for their counts and classes,
    remote ones need timm's ``_info.json`` with ``shard_lengths`` and a ``class_map``."""
    shards, lengths = resolve_shards(root, split)
    where, input_key, labels = f'wds/{root} [{split}]', input_key or 'jpg;png;webp', LabelMap(class_map)
    if lengths is None or labels.classes is None:
        if remote := [u for u in shards if _URL.match(u) and not u.startswith('file:')]:
            raise ValueError(f'{where}: remote shards ({remote[0]}) are not scanned: give timm\'s _info.json with '
                             'shard_lengths beside them, and class_map (a .txt of class names)')
        if missing := [u for u in shards if not Path(u).is_file()]:
            raise FileNotFoundError(f'{where}: {len(missing)} of {len(shards)} shards do not exist (e.g. {missing[0]})')
        scans = [scan_shard(u, target_key) for u in shards]
        first = next(((u, members) for u, (n, _, members) in zip(shards, scans) if n), None)
        if first is None:
            raise ValueError(f'{where}: its {len(shards)} shards hold no samples')
        if not set(input_key.split(';')) & set(first[1]):
            raise ValueError(f'{where}: the first sample of {first[0]} has no {input_key} member (input_key); its '
                             f'members: {", ".join(first[1])}')
        for u, (_, raws, _) in zip(shards, scans):
            if None in raws:
                raise ValueError(f'{where}: sample {raws.index(None)} of {u} has no .{"json" if target_key else "cls"}'
                                 ' label member: set target_key to a field of its .json sidecar')
        lengths = lengths or [n for n, _, _ in scans]
        classes = labels.names([labels(raw, where) for _, raws, _ in scans for raw in raws])
    else:
        classes = labels.classes
    _logger.info(f'{where}: {len(shards)} shards, {sum(lengths)} samples, {len(classes)} classes')
    return WdsImageDataset(shards, lengths, labels, classes, input_key=input_key, target_key=target_key,
                           transform=transform, skip_bad_images=skip_bad_images, root=root)

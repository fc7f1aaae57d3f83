"""``hfds/ID_OR_PATH``: a Hugging Face dataset (a Hub id, a folder of data files, or a ``save_to_disk`` folder) as a
map-style ``(image, label)`` dataset, so ``ResumableSampler`` gives it the folders' exact resume and DDP sharding."""
import io
import logging
from pathlib import Path
from typing import Any

from timm.data.readers.reader import Reader

from timm_bot.data import CheckedImageDataset, LabelMap, split_synonyms

__all__ = ['create_hfds_dataset', 'DatasetsReader']

_logger = logging.getLogger(__name__)
_EXTRA = "pip install 'timm-bot[datasets]'"


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ImportError(f'hfds/ sources need the Hugging Face datasets library: {_EXTRA}') from None
    return datasets


def _first_line(e: BaseException) -> str:
    return f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0]}'


def _pick_split(split: str, names: list[str], where: str) -> str:
    for name in split_synonyms(split):
        if name in names:
            return name
    raise ValueError(f'no "{split}" split in {where} (looked for {", ".join(split_synonyms(split))}; found '
                     f'{", ".join(names) or "none"})')


def _check_hub(name: str) -> None:
    """One quick request: offline, ``load_dataset`` would retry for ~25 s before failing."""
    import huggingface_hub
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return  # datasets reads the cache, or fails at once
    try:
        huggingface_hub.HfApi().dataset_info(name)
    except Exception as e:  # any failure (network, 404, gated) is reported as one line
        raise ValueError(f'hfds/{name}: no local folder {name!r}, and the Hugging Face Hub did not serve dataset '
                         f'{name!r} ({_first_line(e)}). Offline: set HF_HUB_OFFLINE=1 to read it from the Hugging Face '
                         f'cache, or {_copy_hint(name)}') from None


def _copy_hint(name: str) -> str:
    return f'copy it where the Hub is reachable (hf download {name} --repo-type dataset --local-dir DIR), use hfds/DIR'


def load_split(name: str, split: str) -> Any:
    """The ``datasets.Dataset`` of ``split`` (or a synonym): ``save_to_disk`` folders memory-mapped by
    ``load_from_disk`` (no copy); Hub ids and folders of data files (parquet, ...) by ``load_dataset``, as timm."""
    datasets = _import_datasets()
    path, where = Path(name).expanduser(), f'hfds/{name}'
    if (path / 'dataset_dict.json').is_file() or (path / 'state.json').is_file():  # written by save_to_disk
        saved = datasets.load_from_disk(str(path))
        if '[' in split:
            raise ValueError(f'{where}: split slices ({split!r}) need a Hub id or a folder of data files, not a '
                             'save_to_disk folder: save the slice as its own split')
        if isinstance(saved, datasets.Dataset):
            _logger.warning(f'{where} is one saved Dataset without splits: reading it for every split')
            return saved
        return saved[_pick_split(split, list(saved), where)]
    if not path.exists():
        if name.startswith(('.', '/', '~')) or name.count('/') > 1 or not name:
            raise FileNotFoundError(f'{where}: no such folder (expected a Hub dataset id ORG/NAME, a folder of data '
                                    'files such as parquet, or a folder written by save_to_disk)')
        _check_hub(name)
    source = str(path) if path.exists() else name
    try:
        names = datasets.get_dataset_split_names(source)
    except Exception as e:  # FileNotFoundError, EmptyDatasetError, ConnectionError (offline), ...: one line
        hint = '' if path.exists() else f'; not in the Hugging Face cache? {_copy_hint(name)}'
        raise ValueError(f'{where} could not be read by the datasets library ({_first_line(e)}){hint}') from None
    return datasets.load_dataset(source, split=_pick_split(split, names, where) + split[len(split.split('[')[0]):])


def _describe(features: Any) -> str:
    """``image (Image), label (ClassLabel), text (string)``: the columns of an error message."""
    kinds = {k: getattr(f, 'dtype', None) if type(f).__name__ == 'Value' else type(f).__name__
             for k, f in features.items()}
    return ', '.join(f'{k} ({v})' for k, v in kinds.items())


def _resolve_key(features: Any, key: str | None, default: str, kind: str, option: str, where: str) -> str:
    """``key`` checked against the columns; when unset: ``default``, else the only column of feature type ``kind``."""
    if key is None:
        found = [k for k, f in features.items() if type(f).__name__ == kind]
        key = default if default in features else found[0] if len(found) == 1 else None
        if key is None:
            raise ValueError(f'{where} has no {default!r} column and {len(found)} {kind} columns: set {option} to one '
                             f'of its columns: {_describe(features)}')
    elif key not in features:
        raise ValueError(f'{where} has no column {key!r} ({option}); its columns: {_describe(features)}')
    return key


class DatasetsReader(Reader):
    """timm reader of one loaded ``datasets.Dataset``: ``(undecoded image file, label)``, classes from a ``ClassLabel``.

    timm's ``ReaderHfds`` calls ``load_dataset``, which cannot open single ``save_to_disk`` datasets and copies
    the others into the cache; this reader takes the split as loaded. Labels are read once, from the label column."""

    def __init__(self, dataset: Any, input_key: str | None = None, target_key: str | None = None,
                 class_map: str | None = None, where: str = 'the dataset'):
        super().__init__()
        datasets = _import_datasets()
        features = dataset.features
        self.input_key = _resolve_key(features, input_key, 'image', 'Image', 'input_key', where)
        self.target_key = _resolve_key(features, target_key, 'label', 'ClassLabel', 'target_key', where)
        if not isinstance(features[self.input_key], datasets.Image):
            raise ValueError(f'{where}: input_key {self.input_key!r} is not an Image column; its columns: '
                             f'{_describe(features)}')
        self.images = dataset.select_columns([self.input_key]).cast_column(self.input_key, datasets.Image(decode=False))
        self.class_to_idx, self.targets = self._read_targets(dataset, features[self.target_key], class_map, where)

    def _read_targets(self, dataset: Any, feature: Any, class_map: str | None, where: str
                      ) -> tuple[dict[str, int], list[int]]:
        names, dtype = getattr(feature, 'names', None), getattr(feature, 'dtype', '')  # names: a ClassLabel's
        if not (names or dtype.startswith(('int', 'uint')) or dtype in ('string', 'large_string')):
            raise ValueError(f'{where}: target_key {self.target_key!r} holds {dtype or type(feature).__name__} '
                             f'values, not class labels; its columns: {_describe(dataset.features)}')
        labels, key = LabelMap(class_map, names), f'{where} ({self.target_key!r})'
        targets = [labels(t, key) for t in dataset[self.target_key]]
        if labels.classes is None:
            _logger.warning(f'{key} has no class names (not a ClassLabel): naming the classes by their labels')
        return {n: i for i, n in enumerate(labels.names(targets))}, targets

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index][self.input_key]
        fileobj = io.BytesIO(image['bytes']) if image.get('bytes') else open(image['path'], 'rb')  # noqa: SIM115
        return fileobj, self.targets[index]

    def __len__(self) -> int:
        return len(self.images)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str | None:
        return self.images[index][self.input_key].get('path')


def create_hfds_dataset(name: str, split: str, transform: Any = None, skip_bad_images: bool = False,
                        input_key: str | None = None, target_key: str | None = None,
                        class_map: str | None = None) -> CheckedImageDataset:
    """``hfds/NAME`` as a map-style dataset: images decoded (and bad ones named or skipped) as for class folders."""
    where = f'hfds/{name} [{split}]'
    reader = DatasetsReader(load_split(name, split), input_key, target_key, class_map, where)
    return CheckedImageDataset(f'hfds/{name}', transform=transform, skip_bad_images=skip_bad_images, reader=reader)

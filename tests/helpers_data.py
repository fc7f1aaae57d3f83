"""Test-only data helpers: real image files in the class-folder layout timm reads, written from the embedded digits."""
import io
import os
import tarfile
from pathlib import Path

from timm_bot.data import DIGITS, create_image_dataset

_EXT = {'JPEG': '.jpg', 'PNG': '.png'}


def write_image_folder(root: str | os.PathLike, source: str = DIGITS, split: str = 'train',
                       limit_per_class: int | None = None, as_tar: bool = False, fmt: str = 'JPEG') -> Path:
    """Write ``split`` of ``source`` as ``root/{split}/<class>/<i:04d>.jpg`` (or ``root/{split}.tar`` with a directory
    member per class and the same member names, byte-reproducible). JPEG at quality 95; ``fmt='PNG'`` is exact.
    ``limit_per_class`` keeps the first N images of each class. Returns the folder or tar written."""
    ds = create_image_dataset(source, split)
    counts = [0] * ds.num_classes
    members = []
    for i, target in enumerate(ds.targets):
        if limit_per_class is None or counts[target] < limit_per_class:
            buf = io.BytesIO()
            ds[i][0].save(buf, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
            members.append((f'{ds.classes[target]}/{counts[target]:04d}{_EXT[fmt]}', buf.getvalue()))
            counts[target] += 1
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not as_tar:
        for cls in ds.classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        for name, payload in members:
            (root / split / name).write_bytes(payload)
        return root / split
    out = root / f'{split}.tar'
    with tarfile.open(out, 'w', format=tarfile.USTAR_FORMAT) as tf:
        for name, payload in sorted([(cls, None) for cls in ds.classes] + members):
            ti = tarfile.TarInfo(name)
            if payload is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            else:
                ti.size, ti.mode = len(payload), 0o644
            tf.addfile(ti, None if payload is None else io.BytesIO(payload))
    return out

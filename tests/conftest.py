"""Shared pytest fixtures for timm-bot's tests."""
from pathlib import Path

import pytest

# --------------------------------------------------------------------------------------------------------------------
# Data: real image data beside the repository, and small class-folder / tar datasets written from the embedded digits.
# --------------------------------------------------------------------------------------------------------------------

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
DIGITS_PER_CLASS = 30  # images per class in digits_folder / digits_tar (300 train, 300 val)


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """``../shared/data`` beside the repository (cifar10/, cifar10-mini/ tars); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'shared data not available at {SHARED_DATA}')
    return SHARED_DATA


@pytest.fixture(scope='session')
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding ``train/`` and ``val/`` class-folder trees (``<digit>/<i>.jpg``, 30 JPEGs per class).

    Session-scoped and shared: copy it before modifying anything inside.
    """
    pytest.importorskip('sklearn', reason='the digits fixtures need scikit-learn (pip install timm-bot[demo])')
    from timm_bot.data import write_image_folder

    root = tmp_path_factory.mktemp('digits_folder')
    for split in ('train', 'val'):
        write_image_folder(root, split=split, limit_per_class=DIGITS_PER_CLASS)
    return root


@pytest.fixture(scope='session')
def digits_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding ``train.tar`` and ``val.tar`` (members ``<digit>/<i>.jpg``, 30 JPEGs per class).

    Session-scoped and shared: do not modify.
    """
    pytest.importorskip('sklearn', reason='the digits fixtures need scikit-learn (pip install timm-bot[demo])')
    from timm_bot.data import write_image_folder

    root = tmp_path_factory.mktemp('digits_tar')
    for split in ('train', 'val'):
        write_image_folder(root, split=split, limit_per_class=DIGITS_PER_CLASS, as_tar=True)
    return root

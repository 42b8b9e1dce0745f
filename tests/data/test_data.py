from pathlib import Path

import pytest

from ptqbench.data import ImageNetFolder, calibration_batch, eval_subset, load_synsets, resolve_root, subset_ids
from ptqbench.errors import DataNotFoundError


def test_labels_follow_the_1000_synset_order_not_the_folders_present(tiny_imagenet):
    ds = ImageNetFolder(tiny_imagenet, "val")
    labels = sorted({label for _, label in ds.samples})
    assert labels == list(range(0, 800, 100))  # ImageFolder would give 0..7


def test_shared_val_labels(shared_data):
    root = shared_data / "imagenet-mini"
    synsets = load_synsets(root)
    ds = ImageNetFolder(root, "val")
    assert len(ds) == 1300
    path, label = ds.samples[-1]
    assert synsets[label] == path.split("/")[-2]
    assert max(lbl for _, lbl in ds.samples) > 725  # not renumbered to the 725 present classes


def test_missing_root_names_the_path_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PTQBENCH_DATA", str(tmp_path / "absent"))
    with pytest.raises(DataNotFoundError, match=r"tried .*absent/imagenet-mini.*PTQBENCH_DATA.*data.root="):
        resolve_root(None)
    with pytest.raises(DataNotFoundError, match=r"tried /no/such/imagenet \(data.root\)"):
        resolve_root("/no/such/imagenet")


def test_missing_synset_order_is_explained(tmp_path):
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="synsets.txt"):
        load_synsets(tmp_path)


def test_calibration_draw_is_seeded_and_from_train(tiny_imagenet):
    ds = ImageNetFolder(tiny_imagenet, "train", transform=lambda im: __import__("torch").zeros(3, 4, 4))
    a, ids_a = calibration_batch(ds, 5, seed=0)
    _, ids_b = calibration_batch(ds, 5, seed=0)
    _, ids_c = calibration_batch(ds, 5, seed=1)
    assert a.shape == (5, 3, 4, 4) and ids_a == ids_b and ids_a != ids_c
    assert all(i.split("/")[-1].startswith("train_") for i in ids_a)
    with pytest.raises(DataNotFoundError, match="calib.size=99"):
        calibration_batch(ds, 99, seed=0)


def test_eval_limit_is_a_fixed_subset(tiny_imagenet):
    ds = ImageNetFolder(tiny_imagenet, "val")
    assert subset_ids(eval_subset(ds, 3)) == subset_ids(eval_subset(ds, 3))
    assert len(subset_ids(eval_subset(ds, 3))) == 3 and len(eval_subset(ds, None)) == 8


def _damaged_copy(tiny_imagenet, tmp_path):
    """The tiny tree with one truncated and one zero-byte JPEG in val/."""
    import shutil

    root = tmp_path / "imagenet"
    shutil.copytree(tiny_imagenet, root)
    truncated = sorted((root / "val").rglob("*.JPEG"))[1]
    truncated.write_bytes(truncated.read_bytes()[:300])
    empty = sorted((root / "val").rglob("*.JPEG"))[2]
    empty.write_bytes(b"")
    return root, truncated, empty


def test_damaged_image_names_its_path_and_the_fix(tiny_imagenet, tmp_path):
    from ptqbench.errors import CorruptDataError

    root, truncated, empty = _damaged_copy(tiny_imagenet, tmp_path)
    ds = ImageNetFolder(root, "val", transform=lambda im: im.size)
    with pytest.raises(CorruptDataError, match=rf"image {truncated} cannot be decoded \(OSError: .*\)\. Fix: replace it"):
        ds[1]
    with pytest.raises(CorruptDataError, match=rf"image {empty} is empty \(0 bytes\)\. Fix: replace it"):
        ds[2]


def test_damaged_image_in_a_loader_worker_is_one_line(tiny_imagenet, tmp_path):
    """In a DataLoader worker process (data.workers=auto) the error comes back wrapped in the
    worker's traceback; the user sees the original line, with the path."""
    from ptqbench.data import make_loader
    from ptqbench.errors import CorruptDataError, user_message

    root, truncated, _ = _damaged_copy(tiny_imagenet, tmp_path)
    ds = ImageNetFolder(root, "val", transform=lambda im: __import__("torch").zeros(3, 4, 4))
    with pytest.raises(CorruptDataError) as e:
        list(make_loader(ds, batch_size=4, workers=1))
    assert "DataLoader worker process" in str(e.value)  # torch's wrapping
    msg = user_message(e.value)
    assert msg.startswith(f"CorruptDataError: image {truncated} cannot be decoded") and "\n" not in msg


def _batches_with_two_workers(root: str) -> list[int]:
    import torch

    from ptqbench.data import make_loader

    ds = ImageNetFolder(Path(root), "val", transform=lambda im: torch.zeros(3, 4, 4))
    return [int(labels.numel()) for _, labels in make_loader(ds, batch_size=4, workers=2)]


def test_loader_workers_start_inside_a_joblib_worker(tiny_imagenet):
    """hydra/launcher=joblib runs each job in a loky worker, whose default start method is
    "loky"; a DataLoader with workers started there failed with "'Process' object has no
    attribute 'env'". make_loader gives its workers a standard start method."""
    from joblib import Parallel, delayed

    out = Parallel(n_jobs=2, backend="loky")(delayed(_batches_with_two_workers)(str(tiny_imagenet)) for _ in range(2))
    assert out == [[4, 4], [4, 4]]

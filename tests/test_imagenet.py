"""ImageNet as people download it, with names people read: WordNet-id folders named from the
mapping beside them, checkpoints that keep ids and names, inference that prints names, and each
layout (Kaggle's, torchvision's parsed root, the official archives) written as a tiny fake in its
real format, with every bad input one line naming the file."""

import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from helpers import run
from PIL import Image

import inference
import pretrained
from alexnet import AlexNet
from checkpoints import class_meta, load_checkpoint
from data_pipeline import DataConfig, load_data
from errors import CheckpointError, DataError
from imagenet import (
    MAPPING_FILE,
    VAL_SOLUTION_FILE,
    class_names,
    imagenet_wnids,
    list_imagenet,
    torchvision_categories,
)

# Real lines of LOC_synset_mapping.txt (WordNet's words for these synsets), among them the two
# pairs of synsets whose first words are the same.
WORDS = {
    "n01440764": "tench, Tinca tinca",
    "n02012849": "crane",
    "n02111889": "Samoyed, Samoyede",
    "n03126707": "crane",
    "n03710637": "maillot",
    "n03710721": "maillot, tank suit",
}
# Images: 40x40, stored at 40 px and upscaled to 67 (see test_real_folders.py).
TRAIN_FLAGS = ["--image-size", "67", "--workers", "0", "--batch-size", "4", "--epochs", "1", "--max-steps", "1"]


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, without its checkpoints afterwards (~670 MB a run), even when the test failed."""
    yield tmp_path
    for path in tmp_path.rglob("*.pt"):
        if path.name in ("last.pt", "best.pt"):
            path.unlink()


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_mapping(root: Path, wnids: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / MAPPING_FILE).write_text("".join(f"{wnid} {WORDS[wnid]}\n" for wnid in wnids))
    return root / MAPPING_FILE


def write_class_folders(root: Path, wnids: list[str], train: int = 2, val: int = 1) -> Path:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG, as torchvision lays ImageNet out."""
    for label, wnid in enumerate(wnids):
        for i in range(train):
            write_image(root / "train" / wnid / f"{wnid}_{i}.JPEG", 100 * label + i)
        for i in range(val):
            write_image(root / "val" / wnid / f"ILSVRC2012_val_{label * val + i + 1:08d}.JPEG", 1000 + 100 * label + i)
    return root


def write_kaggle(root: Path, wnids: list[str], train: int = 2, val: int = 2) -> Path:
    """Kaggle's download as it unpacks: the mapping, the CSV, class folders of training images and a flat val/."""
    write_mapping(root, wnids)
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    rows = ["ImageId,PredictionString"]
    for label, wnid in enumerate(wnids):
        for i in range(train):
            write_image(data / "train" / wnid / f"{wnid}_{i}.JPEG", 100 * label + i)
        for i in range(val):
            name = f"ILSVRC2012_val_{label * val + i + 1:08d}"
            write_image(data / "val" / f"{name}.JPEG", 1000 + 100 * label + i)
            rows.append(f"{name},{wnid} 12 9 301 280 {wnid} 40 33 120 200 ")  # the class, then boxes
    rows.insert(1, rows.pop())  # not in file order, as Kaggle's CSV is not
    (root / VAL_SOLUTION_FILE).write_text("\n".join(rows) + "\n")
    return root


def load(work: Path, **config) -> object:
    options = {"data_root": str(work / "data"), "image_size": 67, "loader": "memory", "workers": 0, "batch_size": 4}
    return load_data(DataConfig(**{**options, **config}), torch.device("cpu"))


def data_error(call, *args, **kwargs) -> DataError:
    """The DataError `call` raises, checked to be one line."""
    with pytest.raises(DataError) as caught:
        call(*args, **kwargs)
    assert "\n" not in str(caught.value), str(caught.value)
    return caught.value


# --- Names people read -----------------------------------------------------------------------------


def test_the_built_in_ids_are_ilsvrc_2012s_in_torchvisions_order() -> None:
    wnids, categories = imagenet_wnids(), torchvision_categories()
    assert len(wnids) == len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert (wnids[0], categories[0]) == ("n01440764", "tench")
    assert categories[wnids.index("n02111889")] == "Samoyed"


@pytest.mark.parametrize("source", ["mapping", "meta.bin"])
def test_wordnet_folders_are_named_from_the_file_beside_them(work: Path, source: str) -> None:
    wnids = ["n02111889", "n01440764"]
    root = write_class_folders(work / "imagenet", sorted(wnids))
    if source == "mapping":
        write_mapping(root, wnids)
    else:  # what torchvision.datasets.ImageNet leaves: (wnid -> words, the val images' wnids)
        torch.save(({w: tuple(WORDS[w].split(", ")) for w in wnids}, ["n01440764", "n02111889"]), root / "meta.bin")
    data = load(work, data=str(root))
    assert data.classes == ["n01440764", "n02111889"] and data.class_names == ["tench", "Samoyed"]


def test_names_are_torchvisions_even_where_two_synsets_share_a_first_word(work: Path) -> None:
    wnids = sorted(WORDS)
    write_mapping(work, wnids)
    names = class_names(work, wnids, "data")
    categories = torchvision_categories()
    assert names == [categories[imagenet_wnids().index(wnid)] for wnid in wnids]
    assert names[1:2] + names[3:4] == ["crane bird", "crane"]  # unique, as torchvision's


def test_ilsvrc_ids_without_a_file_beside_them_get_torchvisions_names(work: Path) -> None:
    assert class_names(work, ["n01440764", "n02111889"], "data") == ["tench", "Samoyed"]
    assert class_names(work, ["n01440764", "n99999999"], "data") is None  # not an ILSVRC-2012 class
    assert class_names(work, ["ants", "bees"], "data") is None  # folder names are names already


def test_a_class_the_mapping_does_not_list_is_one_error_naming_the_mapping(work: Path) -> None:
    root = write_class_folders(work / "imagenet", ["n01440764", "n02111889"])
    write_mapping(root, ["n01440764"])
    error = data_error(load, work, data=str(root))
    assert error.setting == "data" and "n02111889" in str(error) and str(root / MAPPING_FILE) in str(error)


def test_a_damaged_meta_bin_is_one_error_saying_what_to_do(work: Path) -> None:
    root = write_class_folders(work / "imagenet", ["n01440764", "n02111889"])
    (root / "meta.bin").write_bytes(b"PK\x03\x04 half a file")
    error = str(data_error(load, work, data=str(root)))
    assert str(root / "meta.bin") in error and "delete it" in error


def test_checkpoints_keep_ids_and_names_and_old_ones_load_as_before() -> None:
    old = {"classes": ["a", "b"]}
    assert class_meta(old) == {"classes": ["a", "b"]}  # no "ids": what notebooks saw before
    new = {"classes": ["n01440764", "n02111889"], "class_names": ["tench", "Samoyed"]}
    assert class_meta(new) == {"classes": ["tench", "Samoyed"], "ids": ["n01440764", "n02111889"]}


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A checkpoint as train.py writes it for two WordNet-id classes."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=2)
    path = tmp_path_factory.mktemp("checkpoint") / "best.pt"
    preprocess = {"image_size": 67, "resize_size": 77, "mean": [0.5] * 3, "std": [0.25] * 3, "in_channels": 3}
    torch.save({"model": model.state_dict(), "model_config": model.config, "classes": ["n01440764", "n02111889"],
                "class_names": ["tench", "Samoyed"], "preprocess": preprocess}, path)  # fmt: skip
    yield path
    shutil.rmtree(path.parent)


def test_class_names_that_do_not_fit_are_a_checkpoint_error(imagenet_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(imagenet_checkpoint, weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({**checkpoint, "class_names": ["tench"]}, bad)
    with pytest.raises(CheckpointError, match="class_names"):
        load_checkpoint(bad)


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """inference.main(args) in this process: exit status, stdout, stderr."""
    try:
        inference.main(list(args))
        status = 0
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_inference_prints_the_name_with_its_id_and_labels_override_both(
    imagenet_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "dog.jpg"
    write_image(image, 0)
    status, out, _ = cli(capsys, str(image), "--checkpoint", str(imagenet_checkpoint), "--topk", "2")
    assert status == 0
    lines = out.splitlines()[1:]
    assert sorted(line.split("%")[1].strip() for line in lines) == ["Samoyed (n02111889)", "tench (n01440764)"]
    status, out, _ = cli(capsys, str(image), "--checkpoint", str(imagenet_checkpoint), "--topk", "2", "--json")
    predictions = json.loads(out)["predictions"]
    assert sorted((p["class"], p["id"]) for p in predictions) == [("Samoyed", "n02111889"), ("tench", "n01440764")]
    labels = tmp_path / "labels.txt"
    labels.write_text("Schleie\nSamojede\n")
    status, out, _ = cli(capsys, str(image), "--checkpoint", str(imagenet_checkpoint), "--labels", str(labels))
    assert sorted(line.split("%")[1].strip() for line in out.splitlines()[1:]) == ["Samojede", "Schleie"]


def test_weights_imagenet_names_each_class_as_a_model_trained_here_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # torchvision's layout with random weights instead of the download (the names are what is tested).
    monkeypatch.setattr(pretrained, "imagenet_state_dict", lambda progress=True: AlexNet.torchvision().state_dict())
    _, meta = pretrained.load_imagenet_weights()
    printed = dict(zip(meta["ids"], meta["classes"]))
    wnids = sorted(WORDS)
    write_mapping(tmp_path, wnids)  # the names a model trained on Kaggle's download carries
    assert [printed[wnid] for wnid in wnids] == class_names(tmp_path, wnids, "data")
    assert inference.class_ids(meta)["Samoyed"] == "n02111889"


@pytest.mark.slow
def test_a_model_trained_on_wordnet_folders_prints_readable_names(work: Path) -> None:
    root = write_class_folders(work / "imagenet", ["n01440764", "n02111889"], train=4)
    write_mapping(root, ["n01440764", "n02111889"])
    run("train.py", "--data", str(root), *TRAIN_FLAGS, "--name", "wnids", cwd=work)
    checkpoint = torch.load(work / "runs" / "wnids" / "best.pt", weights_only=True, mmap=True)
    assert checkpoint["classes"] == ["n01440764", "n02111889"] and checkpoint["class_names"] == ["tench", "Samoyed"]
    image = root / "val" / "n02111889" / "ILSVRC2012_val_00000002.JPEG"
    result = run("inference.py", str(image), "--checkpoint", str(work / "runs" / "wnids" / "best.pt"), cwd=work)
    assert "Samoyed (n02111889)" in result.stdout and "tench (n01440764)" in result.stdout, result.stdout


# --- Kaggle's download, read where it lies ----------------------------------------------------------


def test_kaggle_layout_is_read_in_place_with_validation_labels_from_the_csv(work: Path) -> None:
    root = write_kaggle(work / "kaggle", ["n01440764", "n02111889"])
    listing = list_imagenet(root, "data_root")
    assert listing.classes == ["n01440764", "n02111889"] and listing.names == ["tench", "Samoyed"]
    assert [(path.name, label) for path, label in listing.val] == [
        ("ILSVRC2012_val_00000001.JPEG", 0),
        ("ILSVRC2012_val_00000002.JPEG", 0),
        ("ILSVRC2012_val_00000003.JPEG", 1),
        ("ILSVRC2012_val_00000004.JPEG", 1),
    ]
    assert all(path.parent == root / "ILSVRC" / "Data" / "CLS-LOC" / "val" for path, _ in listing.val)  # no copy
    data = load(work, dataset="imagenet", data_root=str(root))
    assert len(data.train) == 4 and len(data.val) == 4 and data.class_names == ["tench", "Samoyed"]
    assert data.val.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("loader", ["stream", "packed"])
def test_kaggle_layout_streams_or_packs_with_the_same_labels(work: Path, loader: str) -> None:
    root = write_kaggle(work / "kaggle", ["n01440764", "n02111889"])
    data = load(work, dataset="imagenet", data_root=str(root), loader=loader)
    labels = torch.cat([labels for _, labels in data.val.batches()])
    assert labels.tolist() == [0, 0, 1, 1] and data.class_names == ["tench", "Samoyed"]
    images, _ = next(data.train.batches(seed=0))
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 40, 40)
    if loader == "packed":  # the packs sit under the data root, and hold the in-memory pixels
        assert len(list((root / "packs").glob("*/pack.json"))) == 2
        memory = load(work, dataset="imagenet", data_root=str(root))
        assert torch.equal(images, next(memory.train.batches(seed=0))[0])


def break_kaggle(root: Path, mishap: str) -> str:
    """Do `mishap` to a Kaggle download -> the file the error must name."""
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    csv = root / VAL_SOLUTION_FILE
    if mishap == "no mapping":
        (root / MAPPING_FILE).unlink()
        return MAPPING_FILE
    if mishap == "no csv":
        csv.unlink()
        return VAL_SOLUTION_FILE
    if mishap == "row without image":
        (data / "val" / "ILSVRC2012_val_00000003.JPEG").unlink()
        return "ILSVRC2012_val_00000003"
    if mishap == "image without row":
        write_image(data / "val" / "ILSVRC2012_val_00000099.JPEG", 7)
        return "ILSVRC2012_val_00000099.JPEG"
    if mishap == "unknown id in csv":
        csv.write_text(
            csv.read_text().replace("ILSVRC2012_val_00000001,n01440764", "ILSVRC2012_val_00000001,n09999999")
        )
        return VAL_SOLUTION_FILE
    if mishap == "unknown class folder":
        write_image(data / "train" / "n09999999" / "x.JPEG", 7)
        return "n09999999"
    if mishap == "partially extracted":
        shutil.rmtree(data / "train" / "n02111889")
        return str(data / "train")
    raise AssertionError(mishap)


@pytest.mark.parametrize(
    "mishap",
    [
        "no mapping",
        "no csv",
        "row without image",
        "image without row",
        "unknown id in csv",
        "unknown class folder",
        "partially extracted",
    ],
)
def test_a_broken_kaggle_download_is_one_error_naming_the_file(work: Path, mishap: str) -> None:
    root = write_kaggle(work / "kaggle", ["n01440764", "n02111889"])
    named = break_kaggle(root, mishap)
    error = data_error(load, work, dataset="imagenet", data_root=str(root))
    assert error.setting == "data_root" and named in str(error), str(error)


def test_no_imagenet_at_all_says_what_is_expected(work: Path) -> None:
    (work / "empty").mkdir()
    error = str(data_error(load, work, dataset="imagenet", data_root=str(work / "empty")))
    assert MAPPING_FILE in error and "ILSVRC2012_img_train.tar" in error and "train/<wnid>/" in error


@pytest.mark.slow
def test_train_on_kaggle_layout_then_inference_prints_names_and_bad_input_is_one_line(work: Path) -> None:
    root = write_kaggle(work / "kaggle", ["n01440764", "n02111889"])
    # The paper's network, crops and lighting, cut short.
    paper = ["--recipe", "paper", "--name", "kaggle", "--no-plots"]
    run("train.py", "--dataset", "imagenet", "--data-root", str(root), *paper, *TRAIN_FLAGS, cwd=work)
    checkpoint = torch.load(work / "runs" / "kaggle" / "best.pt", weights_only=True, mmap=True)
    assert checkpoint["model_config"]["lrn"] and checkpoint["args"]["lighting"] == 0.1  # --recipe paper applied
    image = root / "ILSVRC" / "Data" / "CLS-LOC" / "val" / "ILSVRC2012_val_00000003.JPEG"
    result = run("inference.py", str(image), "--checkpoint", str(work / "runs" / "kaggle" / "best.pt"), cwd=work)
    assert "Samoyed (n02111889)" in result.stdout, result.stdout
    # --resume alone continues it, from anywhere: the dataset and its root come back from the checkpoint
    (work / "elsewhere").mkdir()
    run(
        "train.py",
        "--resume",
        str(work / "runs" / "kaggle"),
        "--epochs",
        "2",
        "--max-steps",
        "2",
        cwd=work / "elsewhere",
    )
    resumed = torch.load(work / "runs" / "kaggle" / "last.pt", weights_only=True, mmap=True)
    assert resumed["epoch"] == 2 and (resumed["args"]["dataset"], resumed["args"]["data_root"]) == (
        "imagenet",
        str(root),
    )
    (root / VAL_SOLUTION_FILE).unlink()
    failed = run("train.py", "--dataset", "imagenet", "--data-root", str(root), *TRAIN_FLAGS, cwd=work, check=False)
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode != 0 and len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[0].startswith(f"error: --data-root {root}: ") and VAL_SOLUTION_FILE in lines[0]


# --- The official archives, through torchvision's parsers; the root they leave --------------------


def tar_of(path: Path, members: dict[str, bytes]) -> Path:
    """A tar archive (gzipped for .tar.gz) holding `members` {name: bytes}."""
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_archives(root: Path, wnids: list[str], train: int = 2, val: int = 2) -> list[str]:
    """The three official archives in their real formats -> the wnid of each validation image:
    a train tar of per-class tars, a flat val tar, and a devkit whose data/meta.mat lists the
    synsets (a non-leaf one among them, as in the real one) and whose ground truth file gives the
    ILSVRC2012_ID of each validation image in file order."""
    root.mkdir(parents=True, exist_ok=True)
    classes = {wnid: tar_of(root / f"{wnid}.tar", {f"{wnid}_{i}.JPEG": jpeg_bytes(i) for i in range(train)})
               for wnid in wnids}  # fmt: skip
    tar_of(root / "ILSVRC2012_img_train.tar", {path.name: path.read_bytes() for path in classes.values()})
    for path in classes.values():
        path.unlink()
    val_wnids = [wnids[(i * 7) % len(wnids)] for i in range(val * len(wnids))]  # shuffled, as the real ones are
    tar_of(
        root / "ILSVRC2012_img_val.tar",
        {f"ILSVRC2012_val_{i + 1:08d}.JPEG": jpeg_bytes(100 + i) for i in range(len(val_wnids))},
    )
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "wordnet_height", "num_train_images"]
    synsets = np.zeros((len(wnids) + 1, 1), dtype=[(name, "O") for name in fields])
    for i, wnid in enumerate(wnids):
        synsets[i, 0] = (i + 1, wnid, WORDS[wnid], "a gloss", 0, 0, train)
    synsets[len(wnids), 0] = (len(wnids) + 1, "n00001740", "entity", "that which exists", len(wnids), 19, 0)
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": synsets})
    truth = "".join(f"{wnids.index(wnid) + 1}\n" for wnid in val_wnids).encode()
    tar_of(root / "ILSVRC2012_devkit_t12.tar.gz", {"ILSVRC2012_devkit_t12/data/meta.mat": mat.getvalue(),
           "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": truth})  # fmt: skip
    return val_wnids


@pytest.fixture
def official_md5s_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks each archive's MD5 sum against the official one; the fakes' differ."""
    import torchvision.datasets.imagenet as tv_imagenet

    monkeypatch.setattr(tv_imagenet, "_verify_archive", lambda root, file, md5: None)


def test_official_archives_are_laid_out_once_into_the_parsed_root(work: Path, official_md5s_pass: None) -> None:
    root = work / "imagenet"
    val_wnids = write_archives(root, ["n01440764", "n02111889"])
    listing = list_imagenet(root, "data_root")
    assert listing.classes == ["n01440764", "n02111889"] and listing.names == ["tench", "Samoyed"]
    assert len(listing.train) == 4 and [label for _, label in listing.train] == [0, 0, 1, 1]
    assert sorted(listing.classes[label] for _, label in listing.val) == sorted(val_wnids)
    assert (root / "meta.bin").is_file() and not list(root.glob(".*.partial"))
    stamp = (root / "train").stat().st_mtime_ns
    assert list_imagenet(root, "data_root").val == listing.val and (root / "train").stat().st_mtime_ns == stamp
    (root / "ILSVRC2012_img_train.tar").unlink()  # the parsed root alone: meta.bin, train/, val/
    (root / "ILSVRC2012_img_val.tar").unlink()
    (root / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    assert list_imagenet(root, "data_root").names == ["tench", "Samoyed"]


def test_validation_images_land_in_the_class_the_devkit_gives(work: Path, official_md5s_pass: None) -> None:
    root = work / "imagenet"
    val_wnids = write_archives(root, ["n01440764", "n02111889", "n03126707"], val=1)
    listing = list_imagenet(root, "data_root")
    by_file = {path.name: listing.classes[label] for path, label in listing.val}
    assert by_file == {f"ILSVRC2012_val_{i + 1:08d}.JPEG": wnid for i, wnid in enumerate(val_wnids)}


def test_an_interrupted_first_run_is_never_taken_as_complete(
    work: Path, official_md5s_pass: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.imagenet as tv_imagenet

    root = work / "imagenet"
    write_archives(root, ["n01440764", "n02111889"])
    original = tv_imagenet.extract_archive
    calls = []

    def interrupted(source, target=None, remove_finished=False):  # Ctrl-C after the first class's archive
        calls.append(source)
        if len(calls) == 4:  # devkit, the train tar, one class tar, then the second class tar
            raise KeyboardInterrupt
        return original(source, target, remove_finished)

    monkeypatch.setattr(tv_imagenet, "extract_archive", interrupted)
    with pytest.raises(KeyboardInterrupt):
        list_imagenet(root, "data_root")
    assert not (root / "train").exists() and (root / ".train.partial").is_dir()  # half-built, and hidden
    monkeypatch.setattr(tv_imagenet, "extract_archive", original)
    listing = list_imagenet(root, "data_root")  # starts the split again
    assert len(listing.train) == 4 and len(listing.val) == 4 and not (root / ".train.partial").exists()


def test_torchvisions_own_half_built_train_folder_is_refused(work: Path) -> None:
    root = write_class_folders(work / "imagenet", ["n01440764", "n02111889"])
    (root / "train" / "n02111889.tar").write_bytes(b"")  # torchvision was stopped before unpacking it
    error = str(data_error(list_imagenet, root, "data_root"))
    assert "n02111889.tar" in error and "delete" in error


def break_archives(root: Path, mishap: str) -> str:
    """Do `mishap` to the official archives -> what the error must name."""
    if mishap.startswith("no "):
        (root / mishap[3:]).unlink()
        return mishap[3:]
    if mishap == "truncated train tar":
        path = root / "ILSVRC2012_img_train.tar"
        path.write_bytes(path.read_bytes()[:3000])
        return path.name
    if mishap == "truncated devkit":
        path = root / "ILSVRC2012_devkit_t12.tar.gz"
        path.write_bytes(path.read_bytes()[:200])
        return path.name
    if mishap == "val tar with an image too few":
        path = root / "ILSVRC2012_img_val.tar"
        tar_of(path, {f"ILSVRC2012_val_{i + 1:08d}.JPEG": jpeg_bytes(i) for i in range(3)})
        return path.name
    raise AssertionError(mishap)


@pytest.mark.parametrize(
    "mishap",
    [
        "no ILSVRC2012_img_train.tar",
        "no ILSVRC2012_img_val.tar",
        "no ILSVRC2012_devkit_t12.tar.gz",
        "truncated train tar",
        "truncated devkit",
        "val tar with an image too few",
    ],
)
def test_a_bad_archive_is_one_error_naming_it_and_leaves_no_split_behind(
    work: Path, official_md5s_pass: None, mishap: str
) -> None:
    root = work / "imagenet"
    write_archives(root, ["n01440764", "n02111889"])
    named = break_archives(root, mishap)
    error = data_error(list_imagenet, root, "data_root")
    assert error.setting == "data_root" and named in str(error) and "download" in str(error), str(error)
    broken = {"truncated train tar": "train", "val tar with an image too few": "val"}.get(mishap)
    assert broken is None or not (root / broken).exists()


def test_the_md5_check_stays_on_for_real_runs(work: Path) -> None:
    root = work / "imagenet"
    write_archives(root, ["n01440764", "n02111889"])
    error = str(data_error(list_imagenet, root, "data_root"))
    assert "ILSVRC2012_devkit_t12.tar.gz" in error and "MD5" in error


@pytest.mark.slow
def test_train_on_the_official_archives_then_inference_prints_names(
    work: Path, official_md5s_pass: None, capsys: pytest.CaptureFixture
) -> None:
    import train

    root = work / "imagenet"
    write_archives(root, ["n01440764", "n02111889"])
    # In this process, not a subprocess: torchvision's MD5 check is patched here.
    flags = ["--dataset", "imagenet", "--data-root", str(root), "--out-dir", str(work / "runs"), "--name", "archives"]
    train.main([*flags, *TRAIN_FLAGS, "--no-plots"])  # (test_a_model_trained_on_wordnet_folders... draws them)
    image = root / "val" / "n02111889" / sorted(p.name for p in (root / "val" / "n02111889").iterdir())[0]
    capsys.readouterr()
    status, out, _ = cli(capsys, str(image), "--checkpoint", str(work / "runs" / "archives" / "best.pt"))
    assert status == 0 and "Samoyed (n02111889)" in out and "tench (n01440764)" in out, out


def test_two_runs_laying_out_the_archives_take_turns(tmp_path: Path, monkeypatch, capsys) -> None:
    """The second run waits for the first (a lock file beside the archives), then finds the layout done and
    unpacks nothing: it used to delete the first one's half-unpacked .train.partial/ and start again."""
    import threading

    from filelock import FileLock

    import imagenet

    for name in imagenet.ARCHIVES.values():
        (tmp_path / name).write_bytes(b"an archive")
    unpacked = []
    monkeypatch.setattr(imagenet, "parse_devkit", lambda root, setting: unpacked.append("devkit"))
    monkeypatch.setattr(imagenet, "lay_out_split", lambda root, split, wnids, setting: unpacked.append(split))
    holding, done = threading.Event(), threading.Event()

    def first_run() -> None:  # holds the lock while it lays everything out
        with FileLock(tmp_path / imagenet.LAYOUT_LOCK):
            holding.set()
            done.wait(timeout=30)
            for made in ("train", "val"):
                (tmp_path / made).mkdir()
            (tmp_path / imagenet.META_FILE).write_bytes(b"parsed")

    thread = threading.Thread(target=first_run)
    thread.start()
    holding.wait(timeout=30)
    threading.Timer(0.5, done.set).start()  # the first run finishes while the second waits
    imagenet.lay_out_archives(tmp_path, "data_root")
    thread.join()
    assert f"Waiting for another process that is laying out {tmp_path} (it holds " in capsys.readouterr().out
    assert unpacked == []

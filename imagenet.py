"""ImageNet: its class names people can read, and the layouts it is downloaded in.

Classes that come from WordNet ids (folders named `n02111889`) are named the way torchvision names
ImageNet's classes (`Samoyed`): the first word of the synset's list of words, as the official
devkit (meta.bin, parsed from its meta.mat) or Kaggle's LOC_synset_mapping.txt give them.
Checkpoints keep both the ids and the names; inference prints the name with the id.

The layouts `--dataset imagenet --data-root DIR` reads (see `list_imagenet`):

- Kaggle's download as it unpacks: LOC_synset_mapping.txt, LOC_val_solution.csv,
  ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG and a flat ILSVRC/Data/CLS-LOC/val/*.JPEG, read where it lies;
- the class-folder layout DIR/train/<wnid>/, DIR/val/<wnid>/ (with meta.bin or LOC_synset_mapping.txt
  beside it for the names), which is also what torchvision.datasets.ImageNet leaves behind;
- the official archives (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz),
  laid out once into the class-folder layout by torchvision's own parsers, atomically.
"""

import contextlib
import csv
import errno
import os
import re
import shutil
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from atomic_files import one_at_a_time
from errors import DataError, first_sentence
from folders import folder_classes, folder_samples
from image_files import IMAGE_EXTENSIONS

WNID = re.compile(r"n\d{8}")
MAPPING_FILE = "LOC_synset_mapping.txt"  # Kaggle's: "n01440764 tench, Tinca tinca" per line
VAL_SOLUTION_FILE = "LOC_val_solution.csv"  # Kaggle's: "ImageId,PredictionString", the class first
LAYOUT_LOCK = ".layout.lock"  # held while the archives are laid out (two runs take turns)
META_FILE = "meta.bin"  # torchvision's parsed devkit: torch.save((wnid_to_classes, val_wnids))
KAGGLE_DATA = Path("ILSVRC") / "Data" / "CLS-LOC"
# The official archives (image-net.org), as torchvision.datasets.ImageNet reads them.
ARCHIVES = {
    "devkit": "ILSVRC2012_devkit_t12.tar.gz",
    "train": "ILSVRC2012_img_train.tar",
    "val": "ILSVRC2012_img_val.tar",
}
# ILSVRC-2012's 1000 classes in their usual order (sorted ids: the order of torchvision's weights).
WNIDS_FILE = Path(__file__).resolve().parent / "imagenet_wnids.txt"
# torchvision names each class by the first word of its synset, except for the two pairs of synsets
# whose first words are the same (two cranes, two maillots): it renames one of each pair so that
# every name is unique. The same two renames here keep our names exactly torchvision's, so that a
# model trained on ImageNet and `--weights imagenet` name every class the same way.
TORCHVISION_RENAMES = {"n02012849": "crane bird", "n03710721": "maillot tank suit"}


def imagenet_wnids() -> list[str]:
    """ILSVRC-2012's 1000 WordNet ids, in the order of torchvision's ImageNet weights."""
    return WNIDS_FILE.read_text(encoding="ascii").split()


def readable_name(wnid: str, words: list[str] | tuple[str, ...]) -> str:
    """The name people read for a class: the first of its synset's words, as torchvision names it."""
    return TORCHVISION_RENAMES.get(wnid, words[0])


def unique_names(wnids: list[str], names: list[str]) -> list[str]:
    """`names`, with the id added to any name two classes share (`crane (n03126707)`): a name then
    says which class it is, and a printed name can be traced back to its id."""
    counts = {name: names.count(name) for name in names}
    return [name if counts[name] == 1 else f"{name} ({wnid})" for wnid, name in zip(wnids, names)]


def read_synset_mapping(path: Path, setting: str) -> dict[str, list[str]]:
    """LOC_synset_mapping.txt -> {wnid: [words]}; DataError (naming the file and line) if it is
    missing or a line is not `<wnid> <words, ...>` with at least one word. A byte-order mark (an editor's
    "UTF-8 with BOM") is skipped, and a tab may separate the id from its words as a space does."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such file; it comes with Kaggle's ImageNet download: put it there", setting
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read it ({error}); download it again", setting) from None
    mapping = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        wnid, *rest = line.split(maxsplit=1)
        words = [word.strip() for word in (rest or [""])[0].split(",") if word.strip()]
        if not WNID.fullmatch(wnid) or not words:  # e.g. "n01440764 ,": an id without a single name
            raise DataError(
                f"{path} line {number}: expected '<WordNet id> <names>' such as 'n01440764 tench, Tinca tinca', "
                f"got {line.strip()[:60]!r}; download the file again",
                setting,
            )
        mapping[wnid] = words
    if not mapping:
        raise DataError(f"{path}: empty; download it again", setting)
    return mapping


def read_meta_bin(path: Path, setting: str) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """torchvision's meta.bin -> ({wnid: words}, the wnid of each validation image in file order);
    DataError if it cannot be read (delete it: the devkit is parsed again)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wnid_to_words, val_wnids = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(wnid_to_words, dict) or not all(isinstance(w, (tuple, list)) for w in wnid_to_words.values()):
            raise ValueError("not torchvision's (wnid_to_classes, val_wnids)")
        nameless = [wnid for wnid, words in wnid_to_words.items() if not named(words)]
        if nameless:  # every class needs a first word: the name it is shown by
            raise ValueError(f"class {nameless[0]!r} has no name, or one that is not text ({len(nameless)} such)")
    except Exception as error:  # truncated, not a torch file, another structure
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"{path}: cannot be read as torchvision's parsed ImageNet devkit ({reason}); delete it, and keep "
            "ILSVRC2012_devkit_t12.tar.gz beside it to parse it again",
            setting,
        ) from None
    return wnid_to_words, list(val_wnids)


def named(words: object) -> bool:
    """Whether a class's words (meta.bin's tuple) begin with a name: a non-empty tuple of non-empty strings."""
    return isinstance(words, (tuple, list)) and bool(words) and all(isinstance(w, str) and w.strip() for w in words)


def class_names(root: Path, classes: list[str], setting: str) -> list[str] | None:
    """Names people read for classes that are WordNet ids, or None for other classes.

    From LOC_synset_mapping.txt or meta.bin in `root` when there is one (a class it does not list
    is a DataError), else from torchvision's names of ILSVRC-2012's 1000 classes (None when a class
    is not among them)."""
    if not classes or not all(WNID.fullmatch(name) for name in classes):
        return None
    if (root / MAPPING_FILE).is_file():
        source, words = root / MAPPING_FILE, read_synset_mapping(root / MAPPING_FILE, setting)
    elif (root / META_FILE).is_file():
        source, words = root / META_FILE, read_meta_bin(root / META_FILE, setting)[0]
    else:
        known = dict(zip(imagenet_wnids(), torchvision_categories()))
        return unique_names(classes, [known[wnid] for wnid in classes]) if set(classes) <= set(known) else None
    unknown = [wnid for wnid in classes if wnid not in words]
    if unknown:
        raise DataError(
            f"class {unknown[0]} is an unknown WordNet id: {source} does not list it "
            f"({len(unknown)} such class(es)); remove the folder or use the mapping file of this dataset",
            setting,
        )
    return unique_names(classes, [readable_name(wnid, words[wnid]) for wnid in classes])


def torchvision_categories() -> list[str]:
    """torchvision's names of ImageNet's 1000 classes (those of AlexNet_Weights.IMAGENET1K_V1)."""
    from torchvision.models import AlexNet_Weights  # imported here: torchvision.models is slow to import

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass
class Listing:
    """What a dataset on disk holds: (path, label) of every image per split, the class ids and the
    names people read (None where the ids are the names)."""

    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    classes: list[str]
    names: list[str] | None
    train_dir: Path  # the folders the decode cache names and keys its files by
    val_dir: Path
    hidden: list[Path]  # files left out of the listing (see folders.report_left_out)
    other: list[Path]
    image_named: list[Path]  # folders named like image files (x.jpg/), read as folders


def list_class_folders(root: Path, setting: str) -> Listing:
    """An image folder root/train/<class>/, root/val/<class>/, with names for WordNet-id classes."""
    classes = folder_classes(root, setting)
    train, train_hidden, train_other, train_named = folder_samples(root / "train", classes, setting)
    val, val_hidden, val_other, val_named = folder_samples(root / "val", classes, setting)
    names = class_names(root, classes, setting)
    return Listing(train, val, classes, names, root / "train", root / "val", train_hidden + val_hidden,
                   train_other + val_other, train_named + val_named)  # fmt: skip


def list_imagenet(root: Path, setting: str) -> Listing:
    """ImageNet under `root` in whichever layout it is (see the module's docstring); DataError,
    naming the file and what to do, for a layout that is incomplete or inconsistent."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; {EXPECTED}", setting)
    if (root / KAGGLE_DATA).is_dir() or (root / VAL_SOLUTION_FILE).is_file():
        return list_kaggle(root, setting)
    if any((root / name).is_file() for name in ARCHIVES.values()):
        lay_out_archives(root, setting)
    if (root / "train").is_dir() or (root / "val").is_dir():
        check_laid_out(root, setting)
        return list_class_folders(root, setting)
    raise DataError(f"{root}: no ImageNet here; {EXPECTED}", setting)


EXPECTED = (
    f"expected Kaggle's download ({MAPPING_FILE}, {VAL_SOLUTION_FILE}, {KAGGLE_DATA}/), "
    "the official ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz, "
    "or train/<wnid>/ and val/<wnid>/ folders"
)


def check_laid_out(root: Path, setting: str) -> None:
    """DataError for class folders that are not complete: a split missing, or the per-class
    archives that torchvision's own (non-atomic) layout of the training archive leaves while unpacking."""
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"{root / split}: no such folder; {EXPECTED}", setting)
    archives = sorted((root / "train").glob("n*.tar"))
    if archives:
        raise DataError(
            f"{archives[0]}: a class archive left in a partially laid-out training folder "
            f"({len(archives)} such); delete {root / 'train'} and run again to lay it out from the archive",
            setting,
        )


def list_kaggle(root: Path, setting: str) -> Listing:
    """Kaggle's ImageNet where it lies: classes from LOC_synset_mapping.txt, training images in
    ILSVRC/Data/CLS-LOC/train/<wnid>/, validation images in the flat ILSVRC/Data/CLS-LOC/val/
    labelled by LOC_val_solution.csv (no copy of them is made)."""
    words = read_synset_mapping(root / MAPPING_FILE, setting)
    classes = sorted(words)
    data = root / KAGGLE_DATA
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise DataError(f"{data / split}: no such folder; unpack Kaggle's download (again) into {root}", setting)
    folders = {p.name for p in (data / "train").iterdir() if p.is_dir() and not p.name.startswith(".")}
    unknown = sorted(folders - set(words))
    if unknown:
        raise DataError(
            f"{data / 'train' / unknown[0]}: unknown WordNet id, not in {root / MAPPING_FILE} "
            f"({len(unknown)} such folder(s)); remove it or use the mapping file of this download",
            setting,
        )
    missing = sorted(set(words) - folders)
    if missing:
        raise DataError(
            f"{data / 'train'} has {len(folders)} of the {len(words)} classes of {MAPPING_FILE} (no {missing[0]}/): "
            "partially extracted? unpack the download again",
            setting,
        )
    train, hidden, other, image_named = folder_samples(data / "train", classes, setting)
    val, val_hidden = kaggle_val(root, data / "val", {wnid: label for label, wnid in enumerate(classes)}, setting)
    names = unique_names(classes, [readable_name(wnid, words[wnid]) for wnid in classes])
    return Listing(train, val, classes, names, data / "train", data / "val", hidden + val_hidden, other, image_named)


def kaggle_val(root: Path, val_dir: Path, labels: dict[str, int], setting: str) -> tuple[list, list[Path]]:
    """(path, label) of each validation image in file order, from LOC_val_solution.csv, and the hidden
    files left out; DataError for a row whose image is missing, an image without a row, an unknown class."""
    path = root / VAL_SOLUTION_FILE
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such file; it comes with Kaggle's ImageNet download: put it there", setting
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read it ({error}); download it again", setting) from None
    present = {p.name: p for p in val_dir.iterdir() if p.is_file()}
    hidden = [p for name, p in present.items() if name.startswith(".")]
    images = {Path(name).stem: p for name, p in present.items() if not name.startswith(".")
              and Path(name).suffix.lower() in IMAGE_EXTENSIONS}  # fmt: skip
    samples, header = {}, int(bool(rows) and rows[0][:1] == ["ImageId"])
    for number, row in enumerate(rows[header:], 1 + header):
        tokens = row[1].split() if len(row) >= 2 else []
        if not tokens:
            raise DataError(f"{path} line {number}: expected 'ImageId,PredictionString', got {row}", setting)
        image, wnid = row[0], tokens[0]
        if wnid not in labels:
            raise DataError(
                f"{path} line {number}: {wnid} is an unknown WordNet id (not in {MAPPING_FILE}); "
                "download both files again, from the same release",
                setting,
            )
        if image not in images:
            raise DataError(
                f"{path} line {number}: no image {val_dir / image}.JPEG; partially extracted? "
                "unpack the download again",
                setting,
            )
        samples[image] = (images[image], labels[wnid])
    unlabelled = sorted(set(images) - set(samples))
    if unlabelled:
        raise DataError(
            f"{images[unlabelled[0]]}: a validation image without a row in {path} ({len(unlabelled)} such); "
            "download the CSV again or remove the image",
            setting,
        )
    return [samples[image] for image in sorted(samples)], hidden


# --- The official archives, laid out once by torchvision's own parsers ---------------------------


def lay_out_archives(root: Path, setting: str) -> None:
    """Lay out what is missing of root/meta.bin, root/train/<wnid>/ and root/val/<wnid>/ from the
    official archives beside them, with torchvision.datasets.ImageNet's parsers (which also check
    the archives' MD5 sums), each atomically: a split is unpacked into a hidden .<split>.partial/
    folder and renamed into place only once complete, so an interrupted run leaves no half-built
    train/ or val/ that a later run would take as complete (the later run starts that split again).
    Two runs take turns (a lock file, LAYOUT_LOCK): the second finds the work done."""
    if not still_to_lay_out(root):
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(one_at_a_time(root / LAYOUT_LOCK, f"laying out {root}"))
        except OSError as error:  # e.g. a read-only folder
            raise DataError(f"{root}: cannot lay out its archives beside them ({error.strerror or error}); lay them "
                            "out once where the folder can be written", setting) from None  # fmt: skip
        lay_out_what_is_missing(root, setting)


def still_to_lay_out(root: Path) -> list[str]:
    """What lay_out_archives would make: "devkit" (meta.bin), "train", "val", in that order."""
    wanted = [split for split in ("train", "val") if not (root / split).is_dir()]
    if not (root / META_FILE).is_file() and ("val" in wanted or (root / ARCHIVES["devkit"]).is_file()):
        wanted.insert(0, "devkit")  # the val images' classes (and everyone's names) are in the devkit
    return wanted


def lay_out_what_is_missing(root: Path, setting: str) -> None:
    """lay_out_archives' work, with the lock held (another run may have done some of it meanwhile)."""
    wanted = still_to_lay_out(root)
    missing = [kind for kind in wanted if not (root / ARCHIVES[kind]).is_file()]
    if missing:
        made = META_FILE if missing[0] == "devkit" else f"{missing[0]}/"
        raise DataError(
            f"{root / ARCHIVES[missing[0]]}: no such file, and no {made} laid out from it; "
            "download it from image-net.org into this folder",
            setting,
        )
    if "devkit" in wanted:
        print(f"Parsing {root / ARCHIVES['devkit']} into {root / META_FILE} (once)")
        parse_devkit(root, setting)
    val_wnids = read_meta_bin(root / META_FILE, setting)[1] if "val" in wanted else []
    for split in ("train", "val"):
        if split in wanted:
            print(f"Laying out {root / ARCHIVES[split]} into {root / split}/<wnid>/ (once; see README for the time)")
            lay_out_split(root, split, val_wnids, setting)


def parse_devkit(root: Path, setting: str) -> None:
    """torchvision's parse_devkit_archive, into a scratch folder, its meta.bin then renamed into place."""
    from torchvision.datasets import imagenet as tv_imagenet

    archive, scratch = root / ARCHIVES["devkit"], root / ".devkit.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        with archive_errors(archive, setting):
            tv_imagenet.parse_devkit_archive(str(scratch), file=str(archive.resolve()))
        os.replace(scratch / META_FILE, root / META_FILE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def lay_out_split(root: Path, split: str, val_wnids: list[str], setting: str) -> None:
    """A split's archive unpacked by torchvision into root/.<split>.partial/<wnid>/, checked, moved to root/<split>."""
    from torchvision.datasets import imagenet as tv_imagenet

    archive, partial = root / ARCHIVES[split], root / f".{split}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted run left
    with archive_errors(archive, setting):
        if split == "train":
            tv_imagenet.parse_train_archive(str(root), folder=partial.name)
        else:
            tv_imagenet.parse_val_archive(str(root), wnids=val_wnids, folder=partial.name)
    loose = [p.name for p in partial.iterdir() if not p.is_dir()]
    count = sum(1 for p in partial.rglob("*") if p.is_file())
    if loose or (split == "val" and count != len(val_wnids)):
        shutil.rmtree(partial, ignore_errors=True)
        found = f"{loose[0]} is not in a class folder" if loose else f"{count} images, not {len(val_wnids)}"
        raise DataError(
            f"{archive}: does not fit {root / META_FILE} ({found}); download the archive (and the devkit) again",
            setting,
        )
    os.replace(partial, root / split)


@contextlib.contextmanager
def archive_errors(archive: Path, setting: str) -> Iterator[None]:
    """What torchvision's parsers raise on a bad archive, as one DataError naming the archive. An
    interruption (KeyboardInterrupt) goes on: the .partial folder it leaves is cleared next time."""
    try:
        yield
    except ImportError as error:
        raise DataError(f"{archive}: reading the devkit needs SciPy ({error}); pip install scipy", setting) from None
    except RuntimeError as error:
        if "is not present in the root directory or is corrupted" not in str(error):
            why = first_sentence(str(error)) or "RuntimeError"
            raise DataError(f"{archive}: not the official archive ({why}); download it again", setting) from None
        reason = "its MD5 sum is not the official one (an incomplete or damaged download?); download it again"
        raise DataError(f"{archive}: {reason}", setting) from None
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            why = first_sentence(str(error)) or type(error).__name__
            raise DataError(
                f"{archive}: truncated, damaged or not the official archive ({why}); download it again", setting
            ) from None
        reason = f"cannot lay it out beside itself ({error.strerror}); see the README for the disk space it needs"
        raise DataError(f"{archive}: {reason}", setting) from None
    except (tarfile.TarError, EOFError, ValueError, KeyError) as error:  # tarfile, gzip, scipy, the devkit
        reason = (
            f"truncated, damaged or not the official archive ({type(error).__name__}: {first_sentence(str(error))})"
        )
        raise DataError(f"{archive}: {reason}; download it again", setting) from None

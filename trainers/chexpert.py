"""CheXpert (Irvin et al. 2019): multi-label chest X-ray classification from a local directory.

The directory is the one Stanford AIMI's `CheXpert-v1.0-small` download unpacks to: `train.csv`
and `valid.csv`, with columns `Path`, `Sex`, `Age`, `Frontal/Lateral`, … and one column per
finding (1 positive, 0 negative, −1 uncertain, blank unmentioned). A `Race` column, merged in
from the CHEXPERT DEMO table, enables race groups. Paths in the CSV start with the dataset's
own folder name (`CheXpert-v1.0-small/train/…`), resolved against the directory or its parent.

- Labels: the five competition findings (`LABELS`). Uncertain labels become `uncertain_label`
  (U-Ones by default: Irvin et al.'s best single policy for Atelectasis and Edema); blank → 0.
- Splits: the official `valid.csv` (radiologist-checked) is the test split; `train.csv` is the
  private pool, partitioned into training and validation images by a keyed hash of each image's
  path (its stable record id) like every other data set. One record is one image: a patient
  with k images is protected at the group-privacy cost of k records (docs/privacy.md).
- Groups: `group_attribute` ∈ sex, age (buckets <40, 40–59, 60–79, 80+), race — the results
  layer's per-group AUC columns (Seyyed-Kalantari et al. 2021 found the largest under-diagnosis
  gaps there).
- Only frontal views, loaded once as uint8 greyscale at `image_size` (default 224).

`write_synthetic_chexpert` makes a tiny directory in the same format (for tests and smoke runs).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from trainers.config import TrainConfig, TrainerError

LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
AGE_BUCKETS = ((0, 40, "<40"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 1000, "80+"))
DEFAULT_SIZE = 224


def load_chexpert(config: TrainConfig):
    """(train images, train labels, test images, test labels, label names, groups)."""
    directory = _directory(config)
    size = config.image_size or DEFAULT_SIZE
    train_rows = _rows(directory / "train.csv")
    if config.train_fraction < 1.0:
        # Only the images either part will read are loaded (the same rule as load_splits).
        from trainers.data import partition

        in_validation, in_train = partition(
            [row["Path"].encode() for row in train_rows], key=config.split_seed,
            validation_fraction=config.held_out_fraction, train_fraction=config.train_fraction,
        )  # fmt: skip
        train_rows = [row for row, v, t in zip(train_rows, in_validation, in_train,
                                                strict=True) if v or t]  # fmt: skip
    test_rows = _rows(directory / "valid.csv")
    if not train_rows or not test_rows:
        raise TrainerError(
            f"{directory} has no frontal images listed in train.csv or valid.csv; check that it "
            "is a CheXpert directory."
        )
    train_x, train_y, train_g = _tensors(directory, train_rows, size, config)
    test_x, test_y, test_g = _tensors(directory, test_rows, size, config)
    names = _group_names(config.group_attribute)
    ids = [row["Path"].encode() for row in train_rows]
    return train_x, train_y, test_x, test_y, LABELS, (train_g, test_g, names), ids


def _directory(config: TrainConfig) -> Path:
    if not config.data_dir:
        raise TrainerError(
            "CheXpert needs its local directory: download CheXpert-v1.0-small (Stanford AIMI) "
            "and pass --set data_dir=DIR, the folder holding train.csv and valid.csv."
        )
    directory = Path(config.data_dir).expanduser()
    if not (directory / "train.csv").is_file() or not (directory / "valid.csv").is_file():
        raise TrainerError(
            f"{directory} is not a CheXpert directory (it needs train.csv and valid.csv); pass "
            "--set data_dir=DIR pointing at the unpacked CheXpert-v1.0-small folder."
        )
    return directory


def _rows(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"Path", "Sex", "Age", *LABELS} - set(reader.fieldnames or ())
        if missing:
            raise TrainerError(
                f"{path} lacks the column(s) {', '.join(sorted(missing))}; it is not a CheXpert "
                "CSV."
            )
        for row in reader:
            if row.get("Frontal/Lateral", "Frontal") != "Frontal":
                continue
            rows.append(row)
    return rows


def _label(value: str, uncertain: float) -> float:
    if value is None or value.strip() == "":
        return 0.0
    number = float(value)
    return uncertain if number == -1 else float(number == 1)


def _tensors(directory: Path, rows: list[dict], size: int, config: TrainConfig):
    from PIL import Image

    images = np.empty((len(rows), 1, size, size), dtype=np.uint8)
    for i, row in enumerate(rows):
        path = _resolve(directory, row["Path"])
        try:
            with Image.open(path) as image:
                resized = image.convert("L").resize((size, size), Image.BILINEAR)
        except OSError as error:
            raise TrainerError(
                f"cannot read the CheXpert image {path} ({error}); restore the file or drop "
                "its row from the CSV."
            ) from None
        images[i, 0] = np.asarray(resized)
    uncertain = 1.0 if config.uncertain_label == "ones" else 0.0
    labels = torch.tensor(
        [[_label(row[name], uncertain) for name in LABELS] for row in rows], dtype=torch.float32
    )
    groups = torch.tensor([_group(row, config.group_attribute) for row in rows])
    return torch.from_numpy(images), labels, groups


def _resolve(directory: Path, relative: str) -> Path:
    relative_path = Path(relative)
    candidates = [directory / relative_path, directory.parent / relative_path]
    if len(relative_path.parts) > 1:
        candidates.append(directory / Path(*relative_path.parts[1:]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise TrainerError(
        f"the CheXpert image {relative!r} is missing (looked under {directory} and its parent); "
        "unpack the whole dataset there."
    )


def _group_names(attribute: str) -> tuple[str, ...]:
    if attribute == "sex":
        return ("Female", "Male", "Unknown")
    if attribute == "age":
        return tuple(name for _, _, name in AGE_BUCKETS) + ("Unknown",)
    return _RACES


_RACES = ("White", "Black", "Asian", "Other", "Unknown")


def _group(row: dict, attribute: str) -> int:
    names = _group_names(attribute)
    if attribute == "sex":
        value = (row.get("Sex") or "").strip()
        return names.index(value) if value in names else names.index("Unknown")
    if attribute == "age":
        try:
            age = float(row.get("Age") or "nan")
        except ValueError:
            age = math.nan
        for index, (low, high, _) in enumerate(AGE_BUCKETS):
            if low <= age < high:
                return index
        return len(AGE_BUCKETS)
    if "Race" not in row:
        raise TrainerError(
            "group_attribute=race needs a Race column in train.csv and valid.csv (merge it from "
            "CheXpert's demographics table), or choose group_attribute=sex or age."
        )
    race = (row.get("Race") or "").lower()
    for index, name in enumerate(_RACES[:-1]):
        if name.lower() in race:
            return index
    return len(_RACES) - 1


def write_synthetic_chexpert(
    directory: str | Path, *, n_train: int = 96, n_valid: int = 24, size: int = 32, seed: int = 0
) -> Path:
    """A tiny directory in CheXpert's format: learnable findings (each one a bright patch in
    its own place), sex/age/race columns, frontal and a few lateral views, uncertain labels."""
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    from PIL import Image

    columns = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "Race", *LABELS]
    for split, count in (("train", n_train), ("valid", n_valid)):
        folder = directory / "CheXpert-v1.0-small" / split
        rows = []
        for i in range(count):
            findings = rng.random(len(LABELS)) < 0.35
            image = rng.normal(0.3, 0.12, (size, size))
            for k, present in enumerate(findings):
                if present:  # finding k: a bright patch in the k-th fifth of the image
                    left = k * size // len(LABELS)
                    image[size // 3 : 2 * size // 3, left : left + size // len(LABELS)] += 0.5
            view = "Lateral" if i % 13 == 12 else "Frontal"
            relative = f"CheXpert-v1.0-small/{split}/patient{i:05d}/study1/view1_{view.lower()}.png"
            path = directory / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = (np.clip(image, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(path)
            labels = [
                "-1.0" if present and rng.random() < 0.1 else ("1.0" if present else
                rng.choice(["0.0", ""]))
                for present in findings
            ]  # fmt: skip
            rows.append([
                relative, rng.choice(["Female", "Male"]), str(int(rng.integers(18, 95))),
                view, "AP", rng.choice(["White", "Black", "Asian", "Other"]), *labels,
            ])  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        with open(directory / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)
    return directory

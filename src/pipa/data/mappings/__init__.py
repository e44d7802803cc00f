"""Label mappings as data: one JSON table per (dataset, class set), each with its provenance.

``load_mapping(name)`` gives a :class:`LabelMapping` whose lookup table sends every raw id to a
train id or 255 (ignore). ``names()`` lists the tables shipped with pipa."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
from ...core.constants import IGNORE_INDEX


@dataclass
class LabelMapping:
    name: str
    class_names: list[str]
    table: dict[int, int]  # raw id -> train id (absent: 255)
    description: str = ""
    provenance: str = ""
    max_raw_id: int = 255  # raw values above this are not ids of the dataset ("outside the mapping")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def lut(self, size: int = 65536) -> np.ndarray:
        lut = np.full(size, IGNORE_INDEX, np.uint8)
        for raw, train in self.table.items():
            lut[raw] = train
        return lut

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Raw ids (any integer array) -> uint8 train ids, 255 for everything unmapped."""
        raw = np.asarray(raw)
        lut = self.lut(max(256, int(raw.max(initial=0)) + 1))
        return lut[raw.astype(np.int64)]

    def unknown_values(self, raw: np.ndarray) -> list[int]:
        """Values that are not ids of the dataset at all (a wrong file or a wrong reader)."""
        vals = np.unique(np.asarray(raw))
        return [int(v) for v in vals if v > self.max_raw_id or v < 0]


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.json"))


def load_mapping(name_or_path: str | Path) -> LabelMapping:
    """A shipped table by name (e.g. ``gta5_19``) or a user's JSON file with ``class_names`` and
    ``map`` (raw id -> train id)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = HERE / f"{name_or_path}.json"
        if not path.is_file():
            raise ValueError(f"unknown label mapping '{name_or_path}'; shipped: {', '.join(names())}")
    try:
        data = json.loads(path.read_text())
        table = {int(k): int(v) for k, v in data["map"].items()}
        class_names = list(data["class_names"])
    except FileNotFoundError:
        raise ValueError(f"label mapping file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a label mapping (needs 'class_names' and 'map'): {exc}") from None
    bad = [v for v in table.values() if not (0 <= v < len(class_names)) and v != IGNORE_INDEX]
    if bad:
        raise ValueError(f"{path}: train id {bad[0]} outside 0..{len(class_names) - 1}")
    return LabelMapping(path.stem, class_names, table, data.get("description", ""), data.get("provenance", ""),
                        int(data.get("max_raw_id", 255)))

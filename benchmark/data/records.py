"""One row per image, the same columns for every source (as torchxrayvision does across datasets)."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field


@dataclass
class ImageRecord:
    """An image known to a dataset.

    `label` is in the dataset's class vocabulary (after preset mapping); `patient_id` is
    prefixed by source so ids never collide; `split` is '' until the patient split assigns
    train/val/test. `mask_source` is one of gt-v7, gt-lungvae, gt-phantom, predicted, or ''.
    """

    path: str
    label: str
    patient_id: str
    source: str
    dataset: str = ""
    split: str = ""
    mask_path: str = ""
    mask_source: str = ""
    marker_mask_path: str = ""
    view: str = ""
    sex: str = ""
    age: float | None = None
    finding: str = ""
    source_split: str = ""
    key: str = ""  # path relative to the source root: machine-independent identity
    extra: dict = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        """Stable id: same file in the same dataset, same id across runs and machines."""
        key = f"{self.dataset}|{self.source}|{self.key or self.path}".encode()
        return hashlib.sha1(key).hexdigest()[:16]

    def as_row(self) -> dict:
        row = asdict(self)
        row.pop("extra")
        row["image_id"] = self.image_id
        return row

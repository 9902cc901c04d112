"""Kosmos-2 geometry: location tokens <-> boxes, entity extraction, the patch grid.

Two different grids exist and the seed text confuses them:
- the vision encoder cuts the 224x224 input into 14-pixel patches: a 16x16 grid (256);
- location tokens ``<patch_index_0000>``..``<patch_index_1023>`` index a 32x32 grid;
  a box is written as (upper-left cell, lower-right cell).
Entity parsing is delegated to transformers' own Kosmos-2 post-processing so our
boxes are exactly what the reference implementation produces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import InvalidArgument

LOCATION_GRID = 32  # 1024 location tokens
IMAGE_SIZE = 224
PATCH_SIZE = 14
PATCH_GRID = IMAGE_SIZE // PATCH_SIZE  # 16
_TAG = re.compile(r"<.*?>")
_PAIR = re.compile(r"^\s*<patch_index_(\d{4})>\s*<patch_index_(\d{4})>\s*$")


@dataclass(frozen=True)
class NormBox:
    """A box in normalised [0, 1] coordinates (x_min, y_min, x_max, y_max)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def validate(self, field: str = "box") -> NormBox:
        vals = (self.x_min, self.y_min, self.x_max, self.y_max)
        if any(not (0.0 <= v <= 1.0) for v in vals):
            raise InvalidArgument(f"{field} coordinates must be normalised to [0, 1], got {vals}")
        if not (self.x_max > self.x_min and self.y_max > self.y_min):
            raise InvalidArgument(f"{field} must have x_max > x_min and y_max > y_min, got {vals}")
        return self

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        return (self.x_min * width, self.y_min * height, self.x_max * width, self.y_max * height)


@dataclass(frozen=True)
class GroundedEntity:
    phrase: str
    start: int
    end: int
    boxes: tuple[NormBox, ...]


def location_token(index: int) -> str:
    return f"<patch_index_{index:04d}>"


def box_to_cells(box: NormBox, grid: int = LOCATION_GRID) -> tuple[int, int]:
    """Upper-left and lower-right cell indices, exactly as Kosmos2Processor computes them."""
    from transformers.models.kosmos2.processing_kosmos2 import coordinate_to_patch_index

    ul, lr = coordinate_to_patch_index((box.x_min, box.y_min, box.x_max, box.y_max), grid)
    # A box touching the right/bottom edge at exactly 1.0 stays in the last cell.
    return max(0, min(grid * grid - 1, ul)), max(0, min(grid * grid - 1, lr))


def cells_to_box(ul: int, lr: int, grid: int = LOCATION_GRID) -> NormBox:
    """The box a (upper-left, lower-right) cell pair decodes to (Kosmos-2's convention)."""
    from transformers.models.kosmos2.processing_kosmos2 import patch_index_to_coordinate

    n = grid * grid
    if not (0 <= ul < n and 0 <= lr < n):
        raise InvalidArgument(f"location cells must be in 0..{n - 1}, got ({ul}, {lr})")
    return NormBox(*patch_index_to_coordinate(ul, lr, grid))


def box_to_tokens(box: NormBox) -> tuple[str, int, int]:
    ul, lr = box_to_cells(box)
    return location_token(ul) + location_token(lr), ul, lr


def tokens_to_box(text: str) -> NormBox:
    """Parse "<patch_index_XXXX><patch_index_YYYY>" into its box."""
    m = _PAIR.match(text)
    if not m:
        raise InvalidArgument(
            f"location tokens must look like '<patch_index_0044><patch_index_0863>', got {text[:80]!r}"
        )
    ul, lr = int(m.group(1)), int(m.group(2))
    n = LOCATION_GRID
    if ul >= n * n or lr >= n * n:
        raise InvalidArgument(f"location cells must be in 0..{n * n - 1}, got {text!r}")
    if lr % n < ul % n or lr // n < ul // n:
        raise InvalidArgument(f"lower-right cell {lr} is left of or above upper-left cell {ul} in {text!r}")
    return cells_to_box(ul, lr)


def extract_entities(raw_text: str) -> tuple[str, list[GroundedEntity]]:
    """Clean text and entities from a raw Kosmos-2 string (everything after </image>).

    Uses transformers' ``clean_text_and_extract_entities_with_bboxes`` (the reference
    post-processing); spans index the returned clean text.
    """
    from transformers.models.kosmos2.processing_kosmos2 import clean_text_and_extract_entities_with_bboxes

    text = raw_text.split("</image>")[-1]
    clean, entities = clean_text_and_extract_entities_with_bboxes(text, num_patches_per_side=LOCATION_GRID)
    out = [GroundedEntity(name, start, end, tuple(NormBox(*b) for b in boxes))
           for name, (start, end), boxes in entities]
    return clean, out


def strip_tags(raw: str) -> str:
    """Remove Kosmos-2 tags (<phrase>, <patch_index_…>, …) from text."""
    return _TAG.sub("", raw)

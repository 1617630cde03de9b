"""The embedded product catalogue: a seeded generator of shop-like products drawn with PIL.

The Hub is out of reach in many places this project runs, so every default run trains on this catalogue.
It is built so that the paper's ladder (CLIP-I < CLIP-IA < CLIP-ITA) comes from its structure:

* most leaves differ in what the image shows (product shape, material, pattern);
* some sibling leaves look alike and differ only in an attribute that is not drawn
  ("audience: kids", "feature: insulated"): only attributes separate them;
* some sibling leaves share image and attributes and differ only in what the title says
  ("Gift Set", "Refurbished", "for Travel"): only titles separate them.

Leaf names are compositional ("Glass Bowls" = a material word seen in "Glass Mugs" + a type seen in
"Ceramic Bowls"), so the held-out (unseen) leaves are learnable from the seen ones.

Output: ``output_dir/{train,validation,test}/*.parquet`` with the canonical schema (see
docs/ARCHITECTURE.md) and ``output_dir/catalogue.json`` (arguments, sizes, tree, held-out leaves).
Products are written shard by shard, so a 1M-product build never holds its images in memory.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from clipita.fileio import write_atomic, write_json
from clipita.progress import progress_bar
from clipita.schema import FEATURES, PATH_SEPARATOR, SPLITS, path_text

GENERATOR_VERSION = 1
ROW_GROUP_SIZE = 500

# ---------------------------------------------------------------------------------------------------------
# Colours and materials
# ---------------------------------------------------------------------------------------------------------

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 45),
    "blue": (45, 90, 205),
    "navy": (28, 38, 92),
    "green": (45, 150, 70),
    "yellow": (235, 200, 45),
    "orange": (240, 130, 35),
    "pink": (240, 145, 185),
    "purple": (125, 60, 160),
    "black": (32, 32, 34),
    "white": (238, 238, 236),
    "grey": (135, 138, 142),
    "beige": (218, 198, 160),
    "brown": (115, 75, 42),
    "teal": (30, 140, 140),
    # material-specific tones
    "natural": (212, 172, 122),
    "walnut": (105, 66, 38),
    "oak": (178, 128, 78),
    "silver": (190, 192, 198),
    "gold": (212, 175, 75),
    "copper": (184, 110, 70),
    "clear": (205, 225, 235),
    "amber": (205, 130, 40),
    "tan": (190, 140, 95),
}
_GENERAL = (
    "red",
    "blue",
    "navy",
    "green",
    "yellow",
    "orange",
    "pink",
    "purple",
    "black",
    "white",
    "grey",
    "beige",
    "teal",
)


@dataclass(frozen=True)
class Material:
    """How a material looks (texture name, palette) and how shops write it (attribute values)."""

    texture: str
    colours: tuple[str, ...] = _GENERAL
    names: tuple[str, ...] = ()  # attribute / title spellings; the first is canonical
    alpha: float = 1.0


MATERIALS: dict[str, Material] = {
    "ceramic": Material("ceramic", names=("ceramic", "porcelain", "stoneware")),
    "glass": Material(
        "glass", ("clear", "blue", "green", "amber"), ("glass", "borosilicate glass"), alpha=0.55
    ),
    "metal": Material(
        "metal", ("silver", "gold", "black", "copper"), ("stainless steel", "metal", "aluminium")
    ),
    "wood": Material("wood", ("natural", "walnut", "oak"), ("wood", "solid wood", "oak wood")),
    "plastic": Material("plastic", names=("plastic", "BPA-free plastic", "ABS")),
    "cotton": Material("cotton", names=("cotton", "100% cotton", "cotton blend")),
    "organic cotton": Material("cotton", names=("organic cotton", "100% organic cotton")),
    "canvas": Material("canvas", names=("canvas", "cotton canvas")),
    "wool": Material("wool", names=("wool", "merino wool", "acrylic knit")),
    "denim": Material("denim", ("blue", "navy", "black", "grey"), ("denim", "stretch denim")),
    "leather": Material("leather", ("black", "brown", "tan", "red", "navy"), ("leather", "genuine leather")),
    "rubber": Material("rubber", names=("rubber", "natural rubber")),
    "mesh": Material("mesh", names=("mesh", "breathable mesh", "knit mesh")),
    "wax": Material(
        "wax", ("white", "beige", "pink", "yellow", "purple", "red"), ("soy wax", "paraffin wax")
    ),
    "plush": Material("plush", ("brown", "beige", "white", "pink", "grey"), ("plush", "polyester plush")),
    "foam": Material("foam", names=("TPE foam", "PVC foam", "NBR foam")),
}
_PATTERN_WORDS = {
    "stripes": ("Striped", "Stripe"),
    "dots": ("Polka Dot", "Dotted"),
    "checks": ("Checked", "Plaid"),
}

# ---------------------------------------------------------------------------------------------------------
# Product shapes, drawn in a unit box: `body` is the coloured, textured part (a mask); `detail` is drawn
# with fixed colours (screens, soles, clock faces).
# ---------------------------------------------------------------------------------------------------------


class _Pen:
    """Draws in unit coordinates of a rotated box onto the body mask and the detail layer.

    Every shape is a polygon or polyline, so the rotation happens on coordinates rather than on pixels
    (no resampling of the layers).
    """

    def __init__(
        self,
        body: ImageDraw.ImageDraw,
        detail: ImageDraw.ImageDraw,
        box,
        angle: float,
        rng: np.random.Generator,
    ):
        self.body, self.detail, self.rng = body, detail, rng
        self.x0, self.y0, self.w, self.h = box
        self.cos, self.sin = math.cos(angle), math.sin(angle)

    def p(self, u: float, v: float) -> tuple[float, float]:
        du, dv = (u - 0.5) * self.w, (v - 0.5) * self.h
        return (
            self.x0 + self.w / 2 + du * self.cos - dv * self.sin,
            self.y0 + self.h / 2 + du * self.sin + dv * self.cos,
        )

    def width(self, t: float) -> int:
        return max(1, round(t * self.w))

    def _draw(self, on: str, fill):
        return (self.body, 255) if on == "body" else (self.detail, fill)

    def poly(self, pts, on="body", fill=None):
        d, f = self._draw(on, fill)
        d.polygon([self.p(u, v) for u, v in pts], fill=f)

    def clear(self, u0, v0, u1, v1):
        """Erase part of the body (to cut an ellipse into a dome or a bowl)."""
        self.body.polygon([self.p(u0, v0), self.p(u1, v0), self.p(u1, v1), self.p(u0, v1)], fill=0)

    def rect(self, u0, v0, u1, v1, on="body", fill=None, radius=0.0):
        r = min(radius, (u1 - u0) / 2, (v1 - v0) / 2)
        if r <= 0:
            return self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], on, fill)
        pts = []
        for cu, cv, a in (
            (u1 - r, v1 - r, 0),
            (u0 + r, v1 - r, 90),
            (u0 + r, v0 + r, 180),
            (u1 - r, v0 + r, 270),
        ):
            pts += _arc_points(cu - r, cv - r, cu + r, cv + r, a, a + 90, 4)
        self.poly(pts, on, fill)

    def ellipse(self, u0, v0, u1, v1, on="body", fill=None, outline: float = 0.0):
        if outline:
            self.line(_arc_points(u0, v0, u1, v1, 0, 360, 28), outline, on, fill)
        else:
            self.poly(_arc_points(u0, v0, u1, v1, 0, 360, 28), on, fill)

    def arc(self, u0, v0, u1, v1, start, end, width, on="body", fill=None):
        self.line(_arc_points(u0, v0, u1, v1, start, end, 16), width, on, fill)

    def line(self, pts, width, on="detail", fill=None):
        d, f = self._draw(on, fill)
        d.line([self.p(u, v) for u, v in pts], fill=f, width=self.width(width), joint="curve")

    def j(self, scale: float = 0.04) -> float:
        """A small random jitter, so two products of one type never share an outline."""
        return float(self.rng.uniform(-scale, scale))


def _arc_points(u0, v0, u1, v1, start: float, end: float, n: int) -> list[tuple[float, float]]:
    """Points on the ellipse inscribed in a box, from `start` to `end` degrees (clockwise, as PIL draws)."""
    cu, cv, ru, rv = (u0 + u1) / 2, (v0 + v1) / 2, (u1 - u0) / 2, (v1 - v0) / 2
    ts = np.radians(np.linspace(start, end, n + 1))
    return [(cu + ru * math.cos(t), cv + rv * math.sin(t)) for t in ts]


DARK = (25, 25, 30, 255)
SHADE = (0, 0, 0, 70)


def _hands(pen: _Pen, cx: float, cy: float, r: float) -> None:
    for length, width in ((0.55, 0.03), (0.85, 0.018)):
        a = pen.rng.uniform(0, 2 * math.pi)
        pen.line([(cx, cy), (cx + length * r * math.cos(a), cy + length * r * math.sin(a))], width, fill=DARK)


def _mug(pen: _Pen) -> None:
    w = 0.55 + pen.j(0.06)
    pen.rect(0.12, 0.22, 0.12 + w, 0.9, radius=0.06)
    pen.ellipse(w, 0.36, w + 0.3, 0.74, outline=0.075)
    pen.ellipse(0.12, 0.16, 0.12 + w, 0.28)
    pen.ellipse(0.15, 0.18, 0.09 + w, 0.26, on="detail", fill=(40, 25, 15, 150))


def _bowl(pen: _Pen) -> None:
    top = 0.38 + pen.j()
    pen.ellipse(0.04, top - 0.45, 0.96, top + 0.5)
    pen.clear(-1, -1, 2, top)
    pen.ellipse(0.04, top - 0.09, 0.96, top + 0.09)
    pen.ellipse(0.09, top - 0.06, 0.91, top + 0.06, on="detail", fill=(0, 0, 0, 80))
    pen.rect(0.35, top + 0.46, 0.65, top + 0.52)


def _plate(pen: _Pen) -> None:
    h = 0.22 + pen.j()
    pen.ellipse(0.02, 0.5 - h, 0.98, 0.5 + h)
    pen.ellipse(0.2, 0.5 - h * 0.6, 0.8, 0.5 + h * 0.6, on="detail", fill=(0, 0, 0, 60), outline=0.015)


def _vase(pen: _Pen) -> None:
    neck, belly = 0.1 + pen.j(0.03), 0.3 + pen.j(0.06)
    vs = np.linspace(0.05, 0.95, 12)
    half = [neck + (belly - neck) * math.sin(math.pi * min(1.0, (v - 0.05) / 0.75)) ** 2 for v in vs]
    pen.poly([(0.5 + h, v) for h, v in zip(half, vs)] + [(0.5 - h, v) for h, v in zip(half[::-1], vs[::-1])])
    pen.ellipse(0.5 - neck - 0.03, 0.02, 0.5 + neck + 0.03, 0.09)


def _candle(pen: _Pen) -> None:
    w = 0.2 + pen.j(0.05)
    pen.rect(0.5 - w, 0.32, 0.5 + w, 0.93)
    pen.ellipse(0.5 - w, 0.27, 0.5 + w, 0.37)
    pen.line([(0.5, 0.31), (0.5, 0.24)], 0.015, fill=DARK)
    pen.ellipse(0.45, 0.08, 0.55, 0.25, on="detail", fill=(250, 170, 40, 255))
    pen.ellipse(0.475, 0.14, 0.525, 0.23, on="detail", fill=(255, 240, 150, 255))


def _clock(pen: _Pen) -> None:
    pen.ellipse(0.06, 0.06, 0.94, 0.94)
    pen.ellipse(0.17, 0.17, 0.83, 0.83, on="detail", fill=(242, 240, 232, 255))
    for k in range(12):
        a = k * math.pi / 6
        pen.line(
            [
                (0.5 + 0.28 * math.cos(a), 0.5 + 0.28 * math.sin(a)),
                (0.5 + 0.32 * math.cos(a), 0.5 + 0.32 * math.sin(a)),
            ],
            0.015,
            fill=DARK,
        )
    _hands(pen, 0.5, 0.5, 0.3)


def _lamp(pen: _Pen) -> None:
    s = pen.j(0.05)
    pen.poly([(0.36 + s, 0.08), (0.64 + s, 0.08), (0.8 + s, 0.4), (0.2 + s, 0.4)])
    pen.ellipse(0.4 + s, 0.36, 0.6 + s, 0.46, on="detail", fill=(255, 240, 170, 230))
    pen.rect(0.47, 0.4, 0.53, 0.86)
    pen.ellipse(0.24, 0.82, 0.76, 0.96)


def _tshirt(pen: _Pen) -> None:
    s = pen.j(0.03)
    pts = [(0.38, 0.1), (0.62, 0.1), (0.86 + s, 0.18), (0.99 + s, 0.4), (0.82, 0.46), (0.79, 0.42), (0.79, 0.95),
           (0.21, 0.95), (0.21, 0.42), (0.18, 0.46), (0.01 - s, 0.4), (0.14 - s, 0.18)]  # fmt: skip
    pen.poly(pts)
    pen.arc(0.38, 0.02, 0.62, 0.2, 0, 180, 0.025, on="detail", fill=SHADE)


def _dress(pen: _Pen) -> None:
    flare = 0.4 + pen.j(0.05)
    pen.poly([(0.37, 0.05), (0.63, 0.05), (0.66, 0.36), (0.61, 0.46), (0.5 + flare, 0.96), (0.5 - flare, 0.96),
              (0.39, 0.46), (0.34, 0.36)])  # fmt: skip
    pen.line([(0.38, 0.44), (0.62, 0.44)], 0.03, fill=SHADE)


def _trousers(pen: _Pen) -> None:
    s = pen.j(0.03)
    pen.poly(
        [
            (0.25, 0.04),
            (0.75, 0.04),
            (0.8 + s, 0.96),
            (0.57, 0.96),
            (0.5, 0.36),
            (0.43, 0.96),
            (0.2 - s, 0.96),
        ]
    )
    pen.line([(0.25, 0.09), (0.75, 0.09)], 0.03, fill=SHADE)


def _running_shoe(pen: _Pen) -> None:
    s = pen.j(0.04)
    pen.poly(
        [
            (0.04, 0.52 + s),
            (0.34, 0.34),
            (0.5, 0.38),
            (0.62, 0.24),
            (0.79, 0.27),
            (0.96, 0.62),
            (0.96, 0.74),
            (0.04, 0.74),
        ]
    )
    pen.rect(0.02, 0.71, 0.98, 0.82, on="detail", fill=(235, 235, 230, 255), radius=0.04)
    for k in range(3):
        pen.line(
            [(0.42 + 0.06 * k, 0.4 - 0.04 * k), (0.5 + 0.06 * k, 0.46 - 0.04 * k)],
            0.02,
            fill=(240, 240, 240, 255),
        )


def _boot(pen: _Pen) -> None:
    toe = 0.93 + pen.j(0.04)
    pen.poly([(0.3, 0.04), (0.64, 0.04), (0.64, 0.55), (toe, 0.7), (toe, 0.86), (0.3, 0.86)])
    pen.rect(0.28, 0.84, toe + 0.02, 0.94, on="detail", fill=(30, 28, 26, 255))
    pen.line([(0.3, 0.1), (0.64, 0.1)], 0.025, fill=SHADE)


def _beanie(pen: _Pen) -> None:
    top = 0.2 + pen.j(0.05)
    pen.ellipse(0.14, top, 0.86, 1.3 - top)
    pen.clear(-1, 0.66, 2, 2)
    pen.rect(0.11, 0.52, 0.89, 0.7, radius=0.04)
    pen.ellipse(0.42, top - 0.13, 0.58, top + 0.03)
    for k in range(7):
        pen.line([(0.17 + 0.11 * k, 0.54), (0.17 + 0.11 * k, 0.68)], 0.015, fill=SHADE)


def _backpack(pen: _Pen) -> None:
    w = 0.3 + pen.j(0.04)
    pen.arc(0.38, 0.04, 0.62, 0.26, 180, 360, 0.04)
    pen.rect(0.5 - w, 0.14, 0.5 + w, 0.93, radius=0.12)
    pen.rect(0.32, 0.56, 0.68, 0.86, on="detail", fill=SHADE, radius=0.05)
    pen.line([(0.35, 0.6), (0.65, 0.6)], 0.015, fill=(20, 20, 20, 160))


def _handbag(pen: _Pen) -> None:
    s = pen.j(0.04)
    pen.arc(0.3, 0.12 + s, 0.7, 0.7, 180, 360, 0.05)
    pen.poly([(0.16, 0.42), (0.84, 0.42), (0.95, 0.9), (0.05, 0.9)])
    pen.rect(0.46, 0.46, 0.54, 0.54, on="detail", fill=(215, 180, 80, 255))


def _watch(pen: _Pen) -> None:
    w = 0.1 + pen.j(0.02)
    pen.rect(0.5 - w, 0.0, 0.5 + w, 1.0, radius=0.03)
    pen.ellipse(0.27, 0.27, 0.73, 0.73, on="detail", fill=(185, 188, 195, 255))
    pen.ellipse(0.31, 0.31, 0.69, 0.69, on="detail", fill=(245, 245, 240, 255))
    _hands(pen, 0.5, 0.5, 0.17)


def _headphones(pen: _Pen) -> None:
    s = pen.j(0.03)
    pen.arc(0.16 - s, 0.08, 0.84 + s, 0.86, 180, 360, 0.075)
    pen.rect(0.07 - s, 0.42, 0.29 - s, 0.8, radius=0.08)
    pen.rect(0.71 + s, 0.42, 0.93 + s, 0.8, radius=0.08)
    pen.rect(0.24 - s, 0.46, 0.3 - s, 0.76, on="detail", fill=DARK)
    pen.rect(0.7 + s, 0.46, 0.76 + s, 0.76, on="detail", fill=DARK)


def _smartphone(pen: _Pen) -> None:
    w = 0.2 + pen.j(0.02)
    pen.rect(0.5 - w, 0.04, 0.5 + w, 0.96, radius=0.06)
    pen.rect(0.53 - w, 0.09, 0.47 + w, 0.91, on="detail", fill=(18, 20, 32, 255), radius=0.03)
    for k in range(int(pen.rng.integers(0, 7))):
        u, v = 0.55 - w + 0.1 * (k % 3), 0.15 + 0.1 * (k // 3)
        c = tuple(int(x) for x in pen.rng.integers(60, 255, 3)) + (255,)
        pen.rect(u, v, u + 0.06, v + 0.06, on="detail", fill=c, radius=0.015)


def _laptop(pen: _Pen) -> None:
    s = pen.j(0.03)
    pen.rect(0.15 - s, 0.1, 0.85 + s, 0.62, radius=0.02)
    pen.rect(0.19 - s, 0.14, 0.81 + s, 0.58, on="detail", fill=(20, 24, 40, 255))
    pen.poly([(0.1 - s, 0.63), (0.9 + s, 0.63), (0.98 + s, 0.77), (0.02 - s, 0.77)])
    pen.line([(0.2, 0.68), (0.8, 0.68)], 0.02, fill=SHADE)


def _phone_case(pen: _Pen) -> None:
    w = 0.2 + pen.j(0.02)
    pen.rect(0.5 - w, 0.04, 0.5 + w, 0.96, radius=0.07)
    pen.rect(0.55 - w, 0.09, 0.72 - w, 0.27, on="detail", fill=DARK, radius=0.03)
    pen.ellipse(0.57 - w, 0.11, 0.64 - w, 0.18, on="detail", fill=(70, 80, 100, 255))


def _chair(pen: _Pen) -> None:
    h = 0.05 + pen.j(0.04)
    pen.rect(0.28, h, 0.72, 0.52, radius=0.04)
    pen.poly([(0.24, 0.5), (0.76, 0.5), (0.8, 0.6), (0.2, 0.6)])
    pen.rect(0.22, 0.6, 0.28, 0.96)
    pen.rect(0.72, 0.6, 0.78, 0.96)
    pen.rect(0.36, 0.6, 0.4, 0.88)


def _table(pen: _Pen) -> None:
    top = 0.34 + pen.j(0.05)
    pen.rect(0.04, top, 0.96, top + 0.09, radius=0.01)
    pen.rect(0.1, top + 0.09, 0.16, 0.94)
    pen.rect(0.84, top + 0.09, 0.9, 0.94)
    pen.rect(0.3, top + 0.09, 0.34, 0.86)


def _soccer_ball(pen: _Pen) -> None:
    pen.ellipse(0.08, 0.08, 0.92, 0.92)
    a0 = pen.rng.uniform(0, 2 * math.pi)
    pent = [
        (0.5 + 0.14 * math.cos(a0 + k * 2 * math.pi / 5), 0.5 + 0.14 * math.sin(a0 + k * 2 * math.pi / 5))
        for k in range(5)
    ]
    pen.poly(pent, on="detail", fill=DARK)
    for u, v in pent:
        pen.line([(u, v), (0.5 + (u - 0.5) * 2.6, 0.5 + (v - 0.5) * 2.6)], 0.02, fill=DARK)


def _water_bottle(pen: _Pen) -> None:
    w = 0.15 + pen.j(0.03)
    pen.rect(0.5 - w, 0.26, 0.5 + w, 0.96, radius=0.06)
    pen.rect(0.41, 0.15, 0.59, 0.28)
    pen.rect(0.39, 0.04, 0.61, 0.16, on="detail", fill=DARK, radius=0.02)


def _yoga_mat(pen: _Pen) -> None:
    r = 0.15 + pen.j(0.03)
    pen.rect(0.08, 0.5 - r, 0.8, 0.5 + r)
    pen.ellipse(0.8 - r * 0.7, 0.5 - r, 0.8 + r * 0.7, 0.5 + r)
    for k in (0.8, 0.55, 0.3):
        pen.ellipse(
            0.8 - r * 0.7 * k,
            0.5 - r * k,
            0.8 + r * 0.7 * k,
            0.5 + r * k,
            on="detail",
            fill=SHADE,
            outline=0.012,
        )


def _teddy_bear(pen: _Pen) -> None:
    s = pen.j(0.03)
    for u0, u1 in ((0.24, 0.4), (0.6, 0.76)):
        pen.ellipse(u0, 0.02, u1, 0.18)
    pen.ellipse(0.3, 0.05, 0.7, 0.42)
    pen.ellipse(0.24 - s, 0.36, 0.76 + s, 0.9)
    pen.ellipse(0.1, 0.42, 0.32, 0.62)
    pen.ellipse(0.68, 0.42, 0.9, 0.62)
    pen.ellipse(0.22, 0.78, 0.44, 0.98)
    pen.ellipse(0.56, 0.78, 0.78, 0.98)
    pen.ellipse(0.42, 0.24, 0.58, 0.36, on="detail", fill=(240, 225, 200, 220))
    for u in (0.4, 0.57):
        pen.ellipse(u, 0.17, u + 0.04, 0.21, on="detail", fill=DARK)
    pen.ellipse(0.475, 0.25, 0.525, 0.29, on="detail", fill=DARK)


def _blocks(pen: _Pen) -> None:
    s = pen.j(0.04)
    for u0, v0 in ((0.08, 0.56), (0.52, 0.56), (0.3 + s, 0.18)):
        pen.rect(u0, v0, u0 + 0.38, v0 + 0.38, radius=0.02)
        pen.ellipse(u0 + 0.12, v0 + 0.12, u0 + 0.26, v0 + 0.26, on="detail", fill=(255, 255, 255, 150))


def _planter(pen: _Pen) -> None:
    for k in range(5):
        a = math.pi * (0.15 + 0.7 * k / 4) + pen.j(0.2)
        u, v = 0.5 + 0.28 * math.cos(a), 0.45 - 0.38 * math.sin(a)
        pen.line([(0.5, 0.5), (u, v)], 0.1, fill=(50, 130, 55, 255))
    pen.poly([(0.2, 0.52), (0.8, 0.52), (0.7, 0.95), (0.3, 0.95)])
    pen.rect(0.17, 0.46, 0.83, 0.55)


def _watering_can(pen: _Pen) -> None:
    s = pen.j(0.04)
    pen.arc(0.28, 0.18, 0.62, 0.62, 180, 360, 0.06)
    pen.rect(0.22, 0.38, 0.66, 0.9, radius=0.08)
    pen.line([(0.6, 0.72), (0.93, 0.3 + s)], 0.07, on="body")
    pen.ellipse(0.87, 0.24 + s, 0.99, 0.36 + s, on="detail", fill=SHADE)


@dataclass(frozen=True)
class ProductType:
    """A drawable product type and how shops name, size and describe it."""

    draw: Callable[[_Pen], None]
    nouns: tuple[str, ...]
    sizes: tuple[str, ...]
    materials: tuple[str, ...]
    patterns: tuple[str, ...] = ("plain",)
    extras: tuple[str, ...] = ()  # generic "key: value" attributes of the type
    defaults: dict[str, tuple[str, ...]] = field(default_factory=dict)  # values of keys a variant leaf sets


_CLOTHES = ("plain", "plain", "stripes", "dots", "checks")
_KIDS_OR_NOT = ("adults", "unisex", "men", "women")
TYPES: dict[str, ProductType] = {
    "mug": ProductType(_mug, ("Mug", "Coffee Mug", "Tea Cup", "Cup"), ("12 oz", "16 oz", "350 ml", "450 ml"),
                       ("ceramic",), ("plain", "plain", "stripes", "dots"), ("care: dishwasher safe", "care: hand wash"),
                       {"feature": ("microwave safe", "dishwasher safe", "stackable")}),
    "bowl": ProductType(_bowl, ("Bowl", "Serving Bowl", "Salad Bowl"), ("15 cm", "20 cm", "1 L", "Set of 2"), ("ceramic",),
                        ("plain", "plain", "dots")),
    "plate": ProductType(_plate, ("Plate", "Dinner Plate", "Dish"), ("20 cm", "26 cm", "Set of 4"), ("ceramic",),
                         ("plain", "plain", "dots", "stripes"), ("care: dishwasher safe",), {"audience": ("adults", "family")}),
    "vase": ProductType(_vase, ("Vase", "Flower Vase", "Bud Vase"), ("20 cm", "30 cm", "12 inch"), ("ceramic",)),
    "candle": ProductType(_candle, ("Candle", "Pillar Candle", "Jar Candle"), ("200 g", "8 oz", "40 h burn time"), ("wax",),
                          extras=("burn time: 40 hours",), defaults={"scent": ("lavender", "vanilla", "sandalwood", "citrus")}),
    "clock": ProductType(_clock, ("Wall Clock", "Clock", "Silent Wall Clock"), ("30 cm", "12 inch", "40 cm"), ("wood",),
                         extras=("power: battery",)),
    "lamp": ProductType(_lamp, ("Desk Lamp", "Table Lamp", "Reading Lamp"), ("40 cm", "E27", "LED"), ("metal",),
                        extras=("bulb: LED",), defaults={"audience": _KIDS_OR_NOT}),
    "tshirt": ProductType(_tshirt, ("T-Shirt", "Tee", "Crew Neck T-Shirt", "Shirt"), ("S", "M", "L", "XL", "XXL"), ("cotton",),
                          _CLOTHES, ("fit: regular", "fit: slim", "sleeve: short"), {"audience": _KIDS_OR_NOT}),
    "dress": ProductType(_dress, ("Dress", "Midi Dress", "Summer Dress"), ("XS", "S", "M", "L"), ("cotton",), _CLOTHES,
                         ("length: midi", "length: knee"), {"occasion": ("casual", "everyday")}),
    "trousers": ProductType(_trousers, ("Trousers", "Pants", "Chinos"), ("W30 L32", "W32 L32", "W34 L30", "M"), ("cotton",),
                            _CLOTHES, ("fit: straight", "fit: slim"), {"audience": _KIDS_OR_NOT}),
    "running_shoe": ProductType(_running_shoe, ("Running Shoes", "Sneakers", "Trainers"), ("US 8", "US 9", "EU 42", "UK 7"),
                                ("mesh",), extras=("closure: lace-up",),
                                defaults={"audience": _KIDS_OR_NOT, "feature": ("breathable", "lightweight", "cushioned")}),
    "boot": ProductType(_boot, ("Boots", "Ankle Boots", "Chelsea Boots"), ("US 8", "US 10", "EU 40", "EU 43"), ("leather",),
                        defaults={"feature": ("slip resistant", "cushioned insole")}),
    "beanie": ProductType(_beanie, ("Beanie", "Hat", "Winter Hat"), ("one size", "S/M", "L/XL"), ("wool",),
                          ("plain", "plain", "stripes"), defaults={"audience": _KIDS_OR_NOT}),
    "backpack": ProductType(_backpack, ("Backpack", "Rucksack", "Daypack"), ("20 L", "25 L", "30 L"), ("canvas",),
                            ("plain", "plain", "checks"), ("pockets: 3", "laptop sleeve: 15 inch"), {"audience": _KIDS_OR_NOT}),
    "handbag": ProductType(_handbag, ("Handbag", "Tote Bag", "Shoulder Bag"), ("small", "medium", "large"), ("leather",)),
    "watch": ProductType(_watch, ("Watch", "Wrist Watch", "Analog Watch"), ("38 mm", "40 mm", "42 mm"), ("metal",),
                         extras=("movement: quartz", "water resistance: 5 ATM")),
    "headphones": ProductType(_headphones, ("Headphones", "Over-Ear Headphones", "Headset"), ("over-ear", "on-ear"),
                              ("plastic",), defaults={"audience": _KIDS_OR_NOT}),
    "smartphone": ProductType(_smartphone, ("Smartphone", "Phone", "Mobile Phone"), ("64GB", "128GB", "256GB"), ("plastic",),
                              extras=("screen: 6.1 inch", "network: 5G")),
    "laptop": ProductType(_laptop, ("Laptop", "Notebook", "Ultrabook"), ('13.3"', '14"', '15.6"'), ("metal",),
                          extras=("ram: 8GB", "ram: 16GB", "storage: 512GB SSD")),
    "phone_case": ProductType(_phone_case, ("Phone Case", "Case", "Protective Cover"), ("iPhone 15", "Galaxy S24", "Pixel 8"),
                              ("plastic",), ("plain", "plain", "dots", "stripes")),
    "chair": ProductType(_chair, ("Chair", "Dining Chair", "Side Chair"), ("45 cm seat", "Set of 2", "Set of 4"), ("wood",),
                         defaults={"audience": _KIDS_OR_NOT}),
    "table": ProductType(_table, ("Table", "Dining Table", "Coffee Table"), ("80 cm", "120 cm", "160 cm"), ("wood",)),
    "soccer_ball": ProductType(_soccer_ball, ("Soccer Ball", "Football", "Match Ball"), ("size 3", "size 4", "size 5"),
                               ("rubber",), defaults={"audience": _KIDS_OR_NOT}),
    "water_bottle": ProductType(_water_bottle, ("Water Bottle", "Bottle", "Sports Bottle"), ("500 ml", "750 ml", "1 L", "32 oz"),
                                ("plastic",), defaults={"feature": ("leak proof", "BPA free", "dishwasher safe")}),
    "yoga_mat": ProductType(_yoga_mat, ("Yoga Mat", "Exercise Mat", "Fitness Mat"), ("4 mm", "6 mm", "183 x 61 cm"), ("foam",),
                            extras=("feature: non-slip",)),
    "teddy_bear": ProductType(_teddy_bear, ("Teddy Bear", "Plush Bear", "Stuffed Bear"), ("25 cm", "40 cm", "12 inch"),
                              ("plush",), extras=("age: 3+",)),
    "blocks": ProductType(_blocks, ("Building Blocks", "Block Set", "Stacking Blocks"), ("30 pieces", "50 pieces", "100 pieces"),
                          ("wood",), extras=("age: 2+",)),
    "planter": ProductType(_planter, ("Planter", "Plant Pot", "Flower Pot"), ("12 cm", "18 cm", "25 cm"), ("ceramic",),
                           defaults={"feature": ("drainage hole", "indoor")}),
    "watering_can": ProductType(_watering_can, ("Watering Can", "Watering Pot"), ("2 L", "5 L", "1 gallon"), ("metal",)),
}  # fmt: skip

# ---------------------------------------------------------------------------------------------------------
# The category tree
# ---------------------------------------------------------------------------------------------------------

# How a leaf differs from its siblings: "image" (shape, material or pattern are drawn), "attribute" (a
# "key: value" that is not drawn), "title" (only the title says it).
_VISIBLE, _ATTRIBUTE, _TITLE = "image", "attribute", "title"


@dataclass(frozen=True)
class Leaf:
    """One leaf category: its path, product type and what sets it apart from its siblings."""

    path: tuple[str, str, str]
    ptype: str
    variant: str  # the compositional word(s) of the name ("Ceramic", "Kids", "Gift Sets"; "" for none)
    cue: str = _VISIBLE
    materials: tuple[str, ...] = ()  # () -> the type's materials
    patterns: tuple[str, ...] = ()  # () -> the type's patterns
    hidden: tuple[str, tuple[str, ...]] | None = None  # attribute that is not drawn: key, values
    phrases: tuple[str, ...] = ()  # title phrases that name a title-only leaf
    title_hint: float = 0.4  # how often the title names an attribute-only variant
    # "hard" layout only: attributes shared by the leaf's group / root ("key", values), and rare title words
    # naming the group. Empty for the demo tree, whose products draw nothing extra for them.
    context: tuple[tuple[str, tuple[str, ...]], ...] = ()
    group_words: tuple[str, ...] = ()


def _tree() -> tuple[Leaf, ...]:
    kids = ("audience", ("kids", "children", "toddlers"))
    insulated = ("feature", ("insulated", "double-wall insulated", "vacuum insulated"))
    waterproof = ("feature", ("waterproof", "water resistant"))
    gift = ("Gift Set", "Gift Box", "Gift Set of 2", "Holiday Gift Set")
    refurbished = ("Refurbished", "Renewed", "Certified Refurbished")
    travel = ("for Travel", "Travel", "Carry-On", "Foldable Travel")

    def leaf(root, mid, name, ptype, variant, cue=_VISIBLE, **kw) -> Leaf:
        return Leaf((root, mid, name), ptype, variant, cue, **kw)

    H, C, S, A, E, F, P, T, G = "Home", "Clothing", "Shoes", "Accessories", "Electronics", "Furniture", "Sports", "Toys", "Garden"  # fmt: skip
    return (
        leaf(H, "Kitchen", "Ceramic Mugs", "mug", "Ceramic", materials=("ceramic",)),
        leaf(H, "Kitchen", "Glass Mugs", "mug", "Glass", materials=("glass",)),
        leaf(H, "Kitchen", "Insulated Mugs", "mug", "Insulated", _ATTRIBUTE, materials=("ceramic", "metal"), hidden=insulated),
        leaf(H, "Kitchen", "Mug Gift Sets", "mug", "Gift Sets", _TITLE, materials=("ceramic",), phrases=gift),
        leaf(H, "Kitchen", "Ceramic Bowls", "bowl", "Ceramic", materials=("ceramic",)),
        leaf(H, "Kitchen", "Glass Bowls", "bowl", "Glass", materials=("glass",)),
        leaf(H, "Kitchen", "Wooden Bowls", "bowl", "Wooden", materials=("wood",)),
        leaf(H, "Kitchen", "Ceramic Plates", "plate", "Ceramic", materials=("ceramic",)),
        leaf(H, "Kitchen", "Kids Plates", "plate", "Kids", _ATTRIBUTE, materials=("ceramic", "plastic"), hidden=kids),
        leaf(H, "Decor", "Ceramic Vases", "vase", "Ceramic", materials=("ceramic",)),
        leaf(H, "Decor", "Glass Vases", "vase", "Glass", materials=("glass",)),
        leaf(H, "Decor", "Scented Candles", "candle", ""),
        leaf(H, "Decor", "Candle Gift Sets", "candle", "Gift Sets", _TITLE, phrases=gift),
        leaf(H, "Decor", "Wooden Wall Clocks", "clock", "Wooden", materials=("wood",)),
        leaf(H, "Decor", "Metal Wall Clocks", "clock", "Metal", materials=("metal",)),
        leaf(H, "Lighting", "Metal Desk Lamps", "lamp", "Metal", materials=("metal",)),
        leaf(H, "Lighting", "Wooden Desk Lamps", "lamp", "Wooden", materials=("wood",)),
        leaf(H, "Lighting", "Kids Desk Lamps", "lamp", "Kids", _ATTRIBUTE, materials=("metal", "plastic"), hidden=kids),
        leaf(C, "Tops", "Cotton T-Shirts", "tshirt", "Cotton", materials=("cotton",), patterns=("plain",)),
        leaf(C, "Tops", "Organic T-Shirts", "tshirt", "Organic", _ATTRIBUTE, materials=("organic cotton",), patterns=("plain",)),
        leaf(C, "Tops", "Striped T-Shirts", "tshirt", "Striped", materials=("cotton",), patterns=("stripes",)),
        leaf(C, "Tops", "Kids T-Shirts", "tshirt", "Kids", _ATTRIBUTE, materials=("cotton",), patterns=("plain",), hidden=kids),
        leaf(C, "Dresses", "Cotton Dresses", "dress", "Cotton", materials=("cotton",), patterns=("plain",)),
        leaf(C, "Dresses", "Polka Dot Dresses", "dress", "Polka Dot", materials=("cotton",), patterns=("dots",)),
        leaf(C, "Dresses", "Party Dresses", "dress", "Party", _TITLE, materials=("cotton",), patterns=("plain",),
             phrases=("Party", "Evening", "Cocktail Party")),
        leaf(C, "Bottoms", "Denim Trousers", "trousers", "Denim", materials=("denim",), patterns=("plain",)),
        leaf(C, "Bottoms", "Cotton Trousers", "trousers", "Cotton", materials=("cotton",), patterns=("plain",)),
        leaf(C, "Bottoms", "Checked Trousers", "trousers", "Checked", materials=("cotton",), patterns=("checks",)),
        leaf(C, "Bottoms", "Kids Trousers", "trousers", "Kids", _ATTRIBUTE, materials=("cotton", "denim"), patterns=("plain",),
             hidden=kids),
        leaf(S, "Athletic Shoes", "Running Shoes", "running_shoe", ""),
        leaf(S, "Athletic Shoes", "Kids Running Shoes", "running_shoe", "Kids", _ATTRIBUTE, hidden=kids),
        leaf(S, "Athletic Shoes", "Waterproof Running Shoes", "running_shoe", "Waterproof", _ATTRIBUTE, hidden=waterproof),
        leaf(S, "Boots", "Leather Boots", "boot", "Leather", materials=("leather",)),
        leaf(S, "Boots", "Rubber Boots", "boot", "Rubber", materials=("rubber",)),
        leaf(S, "Boots", "Waterproof Boots", "boot", "Waterproof", _ATTRIBUTE, materials=("leather",), hidden=waterproof),
        leaf(A, "Bags", "Leather Backpacks", "backpack", "Leather", materials=("leather",)),
        leaf(A, "Bags", "Canvas Backpacks", "backpack", "Canvas", materials=("canvas",)),
        leaf(A, "Bags", "Kids Backpacks", "backpack", "Kids", _ATTRIBUTE, materials=("canvas",), hidden=kids),
        leaf(A, "Bags", "Travel Backpacks", "backpack", "Travel", _TITLE, materials=("canvas",), phrases=travel),
        leaf(A, "Bags", "Leather Handbags", "handbag", "Leather", materials=("leather",)),
        leaf(A, "Bags", "Canvas Handbags", "handbag", "Canvas", materials=("canvas",)),
        leaf(A, "Watches", "Metal Watches", "watch", "Metal", materials=("metal",)),
        leaf(A, "Watches", "Leather Watches", "watch", "Leather", materials=("leather",)),
        leaf(A, "Watches", "Watch Gift Sets", "watch", "Gift Sets", _TITLE, materials=("metal",), phrases=gift),
        leaf(A, "Hats", "Wool Beanies", "beanie", "Wool", materials=("wool",), patterns=("plain",)),
        leaf(A, "Hats", "Striped Beanies", "beanie", "Striped", materials=("wool",), patterns=("stripes",)),
        leaf(A, "Hats", "Kids Beanies", "beanie", "Kids", _ATTRIBUTE, materials=("wool",), patterns=("plain",), hidden=kids),
        leaf(E, "Audio", "Wireless Headphones", "headphones", "Wireless", _ATTRIBUTE,
             hidden=("connectivity", ("wireless", "bluetooth"))),
        leaf(E, "Audio", "Wired Headphones", "headphones", "Wired", _ATTRIBUTE, hidden=("connectivity", ("wired", "3.5 mm jack"))),
        leaf(E, "Audio", "Kids Headphones", "headphones", "Kids", _ATTRIBUTE, hidden=kids),
        leaf(E, "Phones", "Smartphones", "smartphone", ""),
        leaf(E, "Phones", "Refurbished Smartphones", "smartphone", "Refurbished", _TITLE, phrases=refurbished),
        leaf(E, "Phones", "Leather Phone Cases", "phone_case", "Leather", materials=("leather",)),
        leaf(E, "Phones", "Plastic Phone Cases", "phone_case", "Plastic", materials=("plastic",)),
        leaf(E, "Computers", "Laptops", "laptop", ""),
        leaf(E, "Computers", "Refurbished Laptops", "laptop", "Refurbished", _TITLE, phrases=refurbished),
        leaf(F, "Seating", "Wooden Chairs", "chair", "Wooden", materials=("wood",)),
        leaf(F, "Seating", "Metal Chairs", "chair", "Metal", materials=("metal",)),
        leaf(F, "Seating", "Kids Chairs", "chair", "Kids", _ATTRIBUTE, materials=("wood", "plastic"), hidden=kids),
        leaf(F, "Tables", "Wooden Tables", "table", "Wooden", materials=("wood",)),
        leaf(F, "Tables", "Glass Tables", "table", "Glass", materials=("glass",)),
        leaf(F, "Tables", "Metal Tables", "table", "Metal", materials=("metal",)),
        leaf(P, "Team Sports", "Soccer Balls", "soccer_ball", ""),
        leaf(P, "Team Sports", "Kids Soccer Balls", "soccer_ball", "Kids", _ATTRIBUTE, hidden=kids),
        leaf(P, "Hydration", "Plastic Water Bottles", "water_bottle", "Plastic", materials=("plastic",)),
        leaf(P, "Hydration", "Metal Water Bottles", "water_bottle", "Metal", materials=("metal",)),
        leaf(P, "Hydration", "Insulated Water Bottles", "water_bottle", "Insulated", _ATTRIBUTE, materials=("metal",),
             hidden=insulated),
        leaf(P, "Fitness", "Yoga Mats", "yoga_mat", ""),
        leaf(P, "Fitness", "Travel Yoga Mats", "yoga_mat", "Travel", _TITLE, phrases=travel),
        leaf(T, "Plush Toys", "Teddy Bears", "teddy_bear", ""),
        leaf(T, "Plush Toys", "Teddy Bear Gift Sets", "teddy_bear", "Gift Sets", _TITLE, phrases=gift),
        leaf(T, "Building Toys", "Wooden Blocks", "blocks", "Wooden", materials=("wood",)),
        leaf(T, "Building Toys", "Plastic Blocks", "blocks", "Plastic", materials=("plastic",)),
        leaf(G, "Planters", "Ceramic Planters", "planter", "Ceramic", materials=("ceramic",)),
        leaf(G, "Planters", "Plastic Planters", "planter", "Plastic", materials=("plastic",)),
        leaf(G, "Planters", "Self-Watering Planters", "planter", "Self-Watering", _ATTRIBUTE, materials=("plastic", "ceramic"),
             hidden=("feature", ("self-watering", "self watering reservoir"))),
        leaf(G, "Garden Tools", "Metal Watering Cans", "watering_can", "Metal", materials=("metal",)),
        leaf(G, "Garden Tools", "Plastic Watering Cans", "watering_can", "Plastic", materials=("plastic",)),
    )  # fmt: skip


LEAVES: tuple[Leaf, ...] = _tree()


def held_out_leaves(seed: int, fraction: float = 0.15, leaves: Sequence[Leaf] = LEAVES) -> list[int]:
    """Pick the unseen leaves by seed, keeping each one learnable from the seen ones.

    About `fraction` of each kind of leaf (told apart by image, by an attribute, by the title) is held out.
    A leaf may be held out only while its variant word and its product type still occur in a seen leaf and
    its parent keeps a seen child: "Glass Bowls" can be unseen only while, say, "Glass Mugs" and
    "Ceramic Bowls" stay seen.
    """
    rng = np.random.default_rng([seed, 7])

    def learnable(leaf: Leaf, seen: list[Leaf]) -> bool:
        return (
            any(s.ptype == leaf.ptype for s in seen)
            and (not leaf.variant or any(s.variant == leaf.variant for s in seen))
            and any(s.path[:2] == leaf.path[:2] for s in seen)
        )

    held: set[int] = set()
    order = rng.permutation(len(leaves))
    for cue in (_VISIBLE, _ATTRIBUTE, _TITLE):  # each kind of leaf is represented among the unseen
        members = [int(i) for i in order if leaves[i].cue == cue]
        quota, taken = round(fraction * len(members)), 0
        for i in members:
            if taken == quota:
                break
            trial = held | {i}
            seen = [leaf for j, leaf in enumerate(leaves) if j not in trial]
            if all(learnable(leaves[k], seen) for k in trial):
                held, taken = trial, taken + 1
    return sorted(held)


# ---------------------------------------------------------------------------------------------------------
# The "hard" layout: broad parents of unlike-looking children, many small leaves, whole types held out
# ---------------------------------------------------------------------------------------------------------

LAYOUTS = ("demo", "hard")

# root -> (root attribute, {group -> (group attribute, title words naming the group, product types)}).
# A group's types look unlike each other; what they share is the group's (and root's) attribute values,
# which never repeat the category's name, and a title that names the group in ~8% of products.
_HARD_TREE: dict[str, tuple[tuple[str, tuple[str, ...]], dict[str, tuple]]] = {
    "Home": (("warranty", ("2 year warranty", "1 year warranty", "lifetime guarantee")), {
        "Kitchen & Dining": (("food contact", ("food safe", "lead free", "FDA approved")), ("for the Kitchen", "Dining"),
                             ("mug", "bowl", "plate", "water_bottle")),
        "Living Room": (("room", ("lounge", "den", "family room")), ("Living Room", "Home Decor"),
                        ("vase", "candle", "clock", "table")),
        "Home Office": (("workspace", ("desk setup", "remote work", "study")), ("Home Office", "for the Office"),
                        ("lamp", "chair", "laptop")),
    }),
    "Fashion": (("care", ("machine wash", "wipe clean", "spot clean")), {
        "Apparel": (("fit guide", ("true to size", "size up", "relaxed cut")), ("Apparel", "Clothing"),
                    ("tshirt", "dress", "trousers", "beanie")),
        "Footwear & Bags": (("season", ("all season", "spring/summer", "autumn/winter")), ("Footwear", "On the Go"),
                            ("running_shoe", "boot", "backpack")),
        "Accessories": (("gift wrap", ("gift box included", "gift ready", "boxed")), ("Accessories", "Accessory"),
                        ("handbag", "watch", "phone_case")),
    }),
    "Leisure": (("age range", ("teens", "all ages", "family")), {
        "Gadgets": (("battery", ("rechargeable", "USB-C charging", "long battery life")), ("Gadget", "Tech"),
                    ("smartphone", "headphones")),
        "Kids & Play": (("safety", ("CE certified", "non-toxic", "EN71 tested")), ("Kids Play", "Playtime"),
                        ("teddy_bear", "blocks", "soccer_ball")),
        "Outdoor & Fitness": (("use", ("outdoor", "patio", "garden and gym")), ("Outdoor", "Fitness"),
                              ("yoga_mat", "planter", "watering_can")),
    }),
}  # fmt: skip
_HARD_PLURALS = {
    "mug": "Mugs", "bowl": "Bowls", "plate": "Plates", "water_bottle": "Water Bottles", "vase": "Vases",
    "candle": "Candles", "clock": "Wall Clocks", "table": "Tables", "lamp": "Desk Lamps", "chair": "Chairs",
    "laptop": "Laptops", "tshirt": "T-Shirts", "dress": "Dresses", "trousers": "Trousers", "beanie": "Beanies",
    "running_shoe": "Running Shoes", "boot": "Boots", "backpack": "Backpacks", "handbag": "Handbags",
    "watch": "Watches", "phone_case": "Phone Cases", "smartphone": "Smartphones", "headphones": "Headphones",
    "teddy_bear": "Teddy Bears", "blocks": "Building Blocks", "soccer_ball": "Soccer Balls", "yoga_mat": "Yoga Mats",
    "planter": "Planters", "watering_can": "Watering Cans",
}  # fmt: skip
# two drawn materials per type: two leaves told apart by the image
_HARD_MATERIALS = {
    "mug": ("ceramic", "glass"), "bowl": ("ceramic", "wood"), "plate": ("ceramic", "plastic"),
    "water_bottle": ("plastic", "metal"), "vase": ("ceramic", "glass"), "candle": ("wax", "glass"),
    "clock": ("wood", "metal"), "table": ("wood", "glass"), "lamp": ("metal", "wood"), "chair": ("wood", "metal"),
    "laptop": ("metal", "plastic"), "tshirt": ("cotton", "denim"), "dress": ("cotton", "denim"),
    "trousers": ("denim", "cotton"), "beanie": ("wool", "cotton"), "running_shoe": ("mesh", "leather"),
    "boot": ("leather", "rubber"), "backpack": ("canvas", "leather"), "handbag": ("leather", "canvas"),
    "watch": ("metal", "leather"), "phone_case": ("plastic", "leather"), "smartphone": ("plastic", "metal"),
    "headphones": ("plastic", "metal"), "teddy_bear": ("plush", "wool"), "blocks": ("wood", "plastic"),
    "soccer_ball": ("rubber", "leather"), "yoga_mat": ("foam", "rubber"), "planter": ("ceramic", "plastic"),
    "watering_can": ("metal", "plastic"),
}  # fmt: skip
_MATERIAL_WORD = {"ceramic": "Ceramic", "glass": "Glass", "wood": "Wooden", "plastic": "Plastic", "metal": "Metal",
                  "cotton": "Cotton", "denim": "Denim", "wool": "Wool", "mesh": "Mesh", "leather": "Leather",
                  "rubber": "Rubber", "canvas": "Canvas", "plush": "Plush", "wax": "Wax", "foam": "Foam"}  # fmt: skip


def _hard_tree() -> tuple[Leaf, ...]:
    """Leaf = product type x modifier (2 materials, kids, vintage, gift sets): 5 leaves per type, 145 in all,
    under 9 middle groups of 2-4 unlike-looking types and 3 roots."""
    kids = ("audience", ("kids", "children", "toddlers"))
    vintage = ("Vintage", "Retro", "Vintage Style")
    gift = ("Gift Set", "Gift Box", "Gift Set of 2", "Holiday Gift Set")
    leaves = []
    for root, (root_attr, groups) in _HARD_TREE.items():
        for group, (group_attr, words, types) in groups.items():
            ctx = {"context": (group_attr, root_attr), "group_words": words}
            for ptype in types:
                plural = _HARD_PLURALS[ptype]
                for m in _HARD_MATERIALS[ptype]:
                    w = _MATERIAL_WORD[m]
                    leaves.append(Leaf((root, group, f"{w} {plural}"), ptype, w, materials=(m,), **ctx))
                leaves.append(
                    Leaf((root, group, f"Kids {plural}"), ptype, "Kids", _ATTRIBUTE, hidden=kids, **ctx)
                )
                leaves.append(
                    Leaf((root, group, f"Vintage {plural}"), ptype, "Vintage", _TITLE, phrases=vintage, **ctx)
                )
                leaves.append(
                    Leaf(
                        (root, group, f"{plural} Gift Sets"), ptype, "Gift Sets", _TITLE, phrases=gift, **ctx
                    )
                )
    return tuple(leaves)


HARD_LEAVES: tuple[Leaf, ...] = _hard_tree()


def held_out_types(seed: int, fraction: float = 0.2, leaves: Sequence[Leaf] = HARD_LEAVES) -> list[str]:
    """Whole product types held out by seed (all their leaves only in test), each group keeping >= 2 seen types."""
    rng = np.random.default_rng([seed, 11])
    group_types: dict[tuple[str, ...], list[str]] = {}
    for leaf in leaves:
        group_types.setdefault(leaf.path[:2], [])
        if leaf.ptype not in group_types[leaf.path[:2]]:
            group_types[leaf.path[:2]].append(leaf.ptype)
    all_types = [t for types in group_types.values() for t in types]
    quota = round(fraction * len(all_types))
    held: list[str] = []
    for i in rng.permutation(len(all_types)):
        t = all_types[int(i)]
        group = next(g for g, types in group_types.items() if t in types)
        if len(held) < quota and sum(x not in held for x in group_types[group]) > 2:
            held.append(t)
    return sorted(held)


def hard_held_out(seed: int, fraction: float = 0.15) -> tuple[list[int], list[str]]:
    """Held-out leaves of the hard layout: every leaf of the held-out types, plus single leaves of about
    `fraction` of the seen types (an unseen leaf of a known type); and the held-out types."""
    types = held_out_types(seed)
    rng = np.random.default_rng([seed, 12])
    held = {i for i, leaf in enumerate(HARD_LEAVES) if leaf.ptype in types}
    seen_types = sorted({leaf.ptype for leaf in HARD_LEAVES} - set(types))
    for k in rng.permutation(len(seen_types))[: round(fraction * len(seen_types))]:
        own = [i for i, leaf in enumerate(HARD_LEAVES) if leaf.ptype == seen_types[int(k)]]
        held.add(own[int(rng.integers(len(own)))])
    return sorted(held), types


def layout_leaves(layout: str) -> tuple[Leaf, ...]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    return LEAVES if layout == "demo" else HARD_LEAVES


# ---------------------------------------------------------------------------------------------------------
# Text: attributes and titles
# ---------------------------------------------------------------------------------------------------------

BRANDS = ("Northwind", "Acme", "Lumo", "Kestrel", "Oakridge", "Pebble & Co", "Vantage", "Maison Rue", "Tidewell", "Brightly",
          "Copperleaf", "Urbanist", "Nordhaus", "Solace", "Zephyr", "Harbor Lane", "Evergreen", "Quill", "Fable", "Orbit")  # fmt: skip
MARKETING = ("Premium", "NEW", "Best Seller", "Classic", "Modern", "Deluxe", "Eco", "2024 Edition", "Limited Edition", "Handmade",
             "Hot Sale", "Top Rated", "Perfect Gift", "Minimalist", "Vintage Style")  # fmt: skip


def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


@dataclass
class Product:
    """One product's visible facts (drawn) and its text."""

    leaf: int
    ptype: str
    colour: str
    material: str
    pattern: str
    title: str
    attributes: list[str]


def sample_product(leaf_index: int, rng: np.random.Generator, leaves: Sequence[Leaf] = LEAVES) -> Product:
    """Draw one product of a leaf: what its image shows, its attributes and its shop title."""
    leaf = leaves[leaf_index]
    ptype = TYPES[leaf.ptype]
    material = _pick(rng, leaf.materials or ptype.materials)
    pattern = _pick(rng, leaf.patterns or ptype.patterns)
    colour = _pick(rng, MATERIALS[material].colours)
    brand, size = _pick(rng, BRANDS), _pick(rng, ptype.sizes)
    material_word = _pick(rng, MATERIALS[material].names)

    # Attribute candidates, each kept with its own probability; the leaf's distinguishing attribute is kept
    # most often (attribute-only leaves are separable from attributes, not perfectly).
    colour_key = "color" if rng.random() < 0.25 else "colour"
    shown_colour = colour if rng.random() > 0.03 else _pick(rng, _GENERAL)  # occasional noisy value
    candidates: list[tuple[str, float]] = [
        (f"{colour_key}: {shown_colour}", 0.85),
        (f"material: {material_word}", 0.75),
        (f"brand: {brand}", 0.6),
        (f"size: {size}", 0.55),
        (f"pattern: {pattern}", 0.6 if pattern != "plain" else 0.15),
    ]
    if ptype.extras:
        candidates.append((_pick(rng, ptype.extras), 0.5))
    hidden_value = None
    if leaf.hidden:
        hidden_value = _pick(rng, leaf.hidden[1])
        candidates.append((f"{leaf.hidden[0]}: {hidden_value}", 0.85))
    for key, values in ptype.defaults.items():
        if not leaf.hidden or leaf.hidden[0] != key:
            candidates.append((f"{key}: {_pick(rng, values)}", 0.55))
    for (
        key,
        values,
    ) in leaf.context:  # hard layout: group / root attributes, listed first so they survive [:8]
        candidates.insert(2, (f"{key}: {_pick(rng, values)}", 0.6))
    attributes = [a for a, p in candidates if rng.random() < p][:8]
    if not attributes:
        attributes = [candidates[0][0]]
    attributes = [a.title() if rng.random() < 0.1 else a for a in attributes]
    attributes = [attributes[k] for k in rng.permutation(len(attributes))]

    title = _title(rng, leaf, ptype, brand, colour, material_word, pattern, size, hidden_value)
    return Product(leaf_index, leaf.ptype, colour, material, pattern, title, attributes)


def _title(
    rng, leaf: Leaf, ptype: ProductType, brand, colour, material_word, pattern, size, hidden_value
) -> str:
    """A shop title: brand, marketing words, attributes, type noun and size, in one of several orders."""
    title_colour = colour if rng.random() > 0.03 else _pick(rng, _GENERAL)  # ~3% contradict the image
    words = {
        "brand": brand if rng.random() < 0.8 else "",
        "mkt": " ".join(_pick(rng, MARKETING) for _ in range(int(rng.integers(0, 3)))),
        "colour": title_colour.title() if rng.random() < 0.7 else "",
        "material": material_word.title() if rng.random() < 0.5 else "",
        "pattern": _pick(rng, _PATTERN_WORDS[pattern]) if pattern != "plain" and rng.random() < 0.6 else "",
        "noun": _pick(rng, ptype.nouns) if rng.random() > 0.1 else "",  # ~10% omit the type
        "size": size if rng.random() < 0.6 else "",
        "variant": "",
        "tail": "",
    }
    if leaf.cue == _TITLE and rng.random() < 0.85:
        phrase = _pick(rng, leaf.phrases)
        words["variant" if rng.random() < 0.5 else "tail"] = phrase
    elif leaf.cue == _ATTRIBUTE and hidden_value and rng.random() < leaf.title_hint:
        words["variant"] = (
            f"for {hidden_value.title()}" if leaf.hidden[0] == "audience" else hidden_value.title()
        )
    templates = (
        "{brand} {mkt} {variant} {colour} {material} {pattern} {noun} {size} {tail}",
        "{mkt} {noun} {variant} - {colour} {pattern} {material}, {size} | {brand} {tail}",
        "{brand} {noun} {tail}, {colour}, {material}, {size} {variant} {mkt}",
        "{colour} {pattern} {noun} {variant} by {brand} ({size}) {mkt} {tail}",
    )
    if leaf.group_words and rng.random() < 0.08:  # hard layout: the title rarely names the group
        words["tail"] = (words["tail"] + " " + _pick(rng, leaf.group_words)).strip()
    text = _pick(rng, templates).format(**words)
    text = " ".join(text.replace("()", "").split())
    for junk in (" ,", ", ,", "- ,", "| ,"):
        text = text.replace(junk, ",")
    text = text.strip(" ,|-")
    return text or ptype.nouns[0]


# ---------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------

_BACKGROUNDS = ((245, 245, 245), (255, 255, 255), (230, 228, 222), (210, 215, 222), (235, 225, 210), (200, 200, 200),
                (60, 62, 66), (225, 235, 228), (240, 225, 228), (170, 180, 190), (120, 110, 100))  # fmt: skip


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    xs, ys = _grid(size)
    a = np.array(_pick(rng, _BACKGROUNDS), np.float32) + rng.normal(0, 12, 3)
    kind = rng.random()
    if kind < 0.45:
        img = np.broadcast_to(a, (size, size, 3)).copy()
    elif kind < 0.8:  # gradient
        b = np.array(_pick(rng, _BACKGROUNDS), np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        t = ((xs * math.cos(angle) + ys * math.sin(angle)) / size * 0.7 + 0.5).clip(0, 1)[..., None]
        img = a * (1 - t) + b * t
    else:  # wall and floor
        b = a * rng.uniform(0.6, 0.85)
        horizon = rng.uniform(0.55, 0.8) * size
        img = np.where((ys > horizon)[..., None], b, a)
    return img


def _texture(
    material: Material, rgb: np.ndarray, pattern: str, box, rng: np.random.Generator, size: int
) -> np.ndarray:
    """The body's colour field: base colour, pattern, material texture and lighting."""
    xs, ys = _grid(size)
    x0, y0, w, h = box
    img = np.broadcast_to(rgb, (size, size, 3)).astype(np.float32)
    if pattern != "plain":
        period = max(4.0, w * rng.uniform(0.1, 0.16))
        if pattern == "stripes":
            a = _pick(rng, (0.0, math.pi / 2, math.pi / 4))
            on = ((xs * math.cos(a) + ys * math.sin(a)) // (period / 2)) % 2 == 0
        elif pattern == "dots":
            px, py = (xs - x0) % period - period / 2, (ys - y0) % period - period / 2
            on = px * px + py * py < (period * 0.28) ** 2
        else:
            on = (((xs - x0) // (period / 1.3) + (ys - y0) // (period / 1.3)) % 2) == 0
        second = np.array((245, 245, 240) if rgb.mean() < 150 else (30, 30, 40), np.float32)
        img = np.where(on[..., None], second, img)
    t = material.texture
    factor = np.ones((size, size), np.float32)
    if t == "wood":
        grain = np.sin((ys + 4 * np.sin(xs / 9 + rng.uniform(0, 6))) / rng.uniform(2.0, 3.5))
        factor -= 0.22 * (grain > 0.55)
    elif t == "metal":
        factor = 0.8 + 0.35 * np.cos((xs - x0) / max(w, 1) * 2 * math.pi * 1.3 + rng.uniform(0, 6)) ** 2
    elif t in ("canvas", "mesh"):
        step = 4 if t == "canvas" else 5
        factor -= 0.15 * (((xs % step) < 1) | ((ys % step) < 1))
    elif t == "wool":
        factor -= 0.16 * ((xs % 6) < 2)
    elif t == "denim":
        factor -= 0.16 * (((xs + ys) % 5) < 2)
    elif t == "leather":
        blot = rng.normal(0, 1, (6, 6)).astype(np.float32)
        factor = 0.85 + 0.07 * np.asarray(Image.fromarray(blot).resize((size, size), Image.BICUBIC))
    elif t in ("plush", "cotton", "rubber", "foam"):
        factor += rng.normal(0, {"plush": 0.12, "cotton": 0.04}.get(t, 0.05), (size, size)).astype(np.float32)
    elif t == "wax":
        img = img * 0.7 + 255 * 0.3
    img = img * factor[..., None]
    # light from one side, and a specular highlight for shiny materials
    light = rng.uniform(0, 2 * math.pi)
    img = (
        img
        * (
            1 + 0.22 * ((xs - x0 - w / 2) * math.cos(light) + (ys - y0 - h / 2) * math.sin(light)) / max(w, 1)
        )[..., None]
    )
    shine = {"ceramic": 110, "glass": 140, "plastic": 70, "metal": 60}.get(t, 0)
    if shine:
        hx, hy = x0 + w * rng.uniform(0.25, 0.4), y0 + h * rng.uniform(0.25, 0.4)
        sigma = w * (0.06 if t in ("plastic", "glass") else 0.12)
        img = img + shine * np.exp(-((xs - hx) ** 2 + (ys - hy) ** 2) / (2 * sigma * sigma))[..., None]
    return img.clip(0, 255)


def _erode(a: np.ndarray, steps: int) -> np.ndarray:
    """Shrink a mask by `steps` pixels (a cross-shaped minimum filter, in numpy: cheaper than PIL's)."""
    for _ in range(steps):
        b = a.copy()
        b[1:] = np.minimum(b[1:], a[:-1])
        b[:-1] = np.minimum(b[:-1], a[1:])
        b[:, 1:] = np.minimum(b[:, 1:], a[:, :-1])
        b[:, :-1] = np.minimum(b[:, :-1], a[:, 1:])
        a = b
    return a


def _object(
    ptype: str, colour: str, material: str, pattern: str, rng: np.random.Generator, size: int, scale: float
) -> Image.Image:
    """One product, rotated a little, on a transparent layer."""
    side = size * scale
    x0 = size / 2 - side / 2 + rng.uniform(-0.12, 0.12) * size
    y0 = size / 2 - side / 2 + rng.uniform(-0.12, 0.12) * size
    box = (x0, y0, side, side)
    mask = Image.new("L", (size, size), 0)
    detail = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    angle = math.radians(rng.uniform(-12, 12))
    TYPES[ptype].draw(_Pen(ImageDraw.Draw(mask), ImageDraw.Draw(detail), box, angle, rng))
    m = MATERIALS[material]
    rgb = np.array(COLOURS[colour], np.float32) + rng.normal(0, 10, 3)
    fill = _texture(m, rgb, pattern, box, rng, size)
    mask_a = np.asarray(mask, np.float32)
    edge = mask_a - _erode(mask_a, 1)
    fill *= (1 - 0.35 * edge / 255)[..., None]
    if m.texture == "leather":  # stitching just inside the outline
        ring = (_erode(mask_a, 2) > 0) & (_erode(mask_a, 3) == 0)
        xs, ys = _grid(size)
        fill[ring & (((xs + ys) % 6) < 3)] = (235, 225, 200)
    alpha = mask_a * m.alpha
    if m.texture == "glass":
        alpha = np.maximum(alpha, edge * 0.9)
    layer = Image.fromarray(np.dstack([fill, alpha]).astype(np.uint8), "RGBA")
    layer.alpha_composite(detail)
    return layer


def render_image(product: Product, rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """Draw a product photo: background, maybe a distracting object, the product with its shadow, lighting, noise."""
    size = image_size * 2  # drawn at twice the size, then reduced: smooth edges
    canvas = Image.fromarray(_background(rng, size).clip(0, 255).astype(np.uint8), "RGB").convert("RGBA")
    if rng.random() < 0.3:  # a second, smaller object in the scene
        other = _pick(rng, tuple(TYPES))
        mat = TYPES[other].materials[0]
        canvas.alpha_composite(
            _object(
                other, _pick(rng, MATERIALS[mat].colours), mat, "plain", rng, size, rng.uniform(0.25, 0.4)
            ),
            dest=(int(rng.choice((-1, 1)) * size * 0.3), int(rng.choice((-1, 1)) * size * 0.3)),
        )
    obj = _object(
        product.ptype, product.colour, product.material, product.pattern, rng, size, rng.uniform(0.5, 0.88)
    )
    shadow = obj.getchannel("A").filter(ImageFilter.GaussianBlur(size / 40))
    dark = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    dark.putalpha(shadow.point(lambda a: int(a * 0.35)))
    canvas.alpha_composite(dark, dest=(int(size * 0.025), int(size * 0.035)))
    canvas.alpha_composite(obj)
    img = np.asarray(canvas.convert("RGB").reduce(2), np.float32)
    img = (img - 128) * rng.uniform(0.8, 1.15) + 128 * rng.uniform(0.85, 1.12)
    img = img + rng.normal(0, rng.uniform(1, 7), img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")


def _encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def product_row(
    index: int, leaf_index: int, seed: int, image_size: int = 64, leaves: Sequence[Leaf] = LEAVES
) -> dict:
    """The canonical row of product `index`: it depends only on (seed, index, leaf), not on sharding."""
    rng = np.random.default_rng([seed, index])
    product = sample_product(leaf_index, rng, leaves)
    image = render_image(product, rng, image_size)
    return {
        "product_id": f"P{index:07d}",
        "image": {"bytes": _encode(image), "path": None},
        "title": product.title,
        "attributes": product.attributes,
        "category": list(leaves[leaf_index].path),
    }


# ---------------------------------------------------------------------------------------------------------
# Writing the catalogue
# ---------------------------------------------------------------------------------------------------------


def plan_catalogue(
    num_products: int,
    seed: int,
    unseen_leaf_fraction: float,
    val_fraction: float,
    test_fraction: float,
    layout: str = "demo",
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Leaf and split of every product (small integer arrays), and the held-out leaves.

    Leaf popularity is mildly long-tailed. Products of held-out leaves all go to test; the others are split
    at random with `val_fraction` / `test_fraction`, so test holds seen and unseen leaves.
    """
    if not 0 <= val_fraction + test_fraction < 1:
        raise ValueError(
            f"val_fraction + test_fraction must be in [0, 1), got {val_fraction} + {test_fraction}"
        )
    leaves = layout_leaves(layout)
    rng = np.random.default_rng([seed, 1])
    weights = rng.lognormal(0.0, 0.4, len(leaves))
    leaf_of = rng.choice(len(leaves), size=num_products, p=weights / weights.sum()).astype(np.int16)
    if layout == "demo":
        held = held_out_leaves(seed, unseen_leaf_fraction)
    else:
        held = hard_held_out(seed, unseen_leaf_fraction)[0]
    u = rng.random(num_products)
    split_of = np.where(u < val_fraction, 1, np.where(u < val_fraction + test_fraction, 2, 0)).astype(np.int8)
    split_of[np.isin(leaf_of, held)] = 2
    return leaf_of, split_of, held


def _write_shard(job: tuple[str, np.ndarray, np.ndarray, int, int, str]) -> int:
    """Write one parquet shard (atomically: a half-written file never looks finished)."""
    path, indices, leaf_of, seed, image_size, layout = job
    leaves = layout_leaves(layout)
    schema = FEATURES.arrow_schema

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(str(tmp), schema) as writer:
            for start in range(0, len(indices), ROW_GROUP_SIZE):
                rows = [
                    product_row(int(i), int(leaf), seed, image_size, leaves)
                    for i, leaf in zip(
                        indices[start : start + ROW_GROUP_SIZE], leaf_of[start : start + ROW_GROUP_SIZE]
                    )
                ]
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))

    write_atomic(path, write)
    return len(indices)


def generate_catalogue(
    output_dir: str | os.PathLike,
    num_products: int = 6000,
    seed: int = 0,
    image_size: int = 64,
    unseen_leaf_fraction: float = 0.15,
    val_fraction: float = 0.1,
    test_fraction: float = 0.15,
    num_proc: int = 1,
    shard_size: int = 2000,
    progress: bool = True,
    layout: str = "demo",
) -> Path:
    """Generate the catalogue into `output_dir` and return it. The same arguments give the same rows,
    whatever `num_proc` (each product is drawn from its own seed)."""
    args = {k: v for k, v in locals().items() if k in generation_defaults()}  # what catalogue.json records
    if layout != "demo":  # the demo catalogue's catalogue.json stays as it was
        args["layout"] = layout
    leaves = layout_leaves(layout)
    if num_products < 1 or image_size < 16 or shard_size < 1:
        raise ValueError(
            f"need num_products >= 1, image_size >= 16, shard_size >= 1; got {num_products}, {image_size}, {shard_size}"
        )
    out = Path(output_dir)
    started = time.perf_counter()
    leaf_of, split_of, held = plan_catalogue(
        num_products, seed, unseen_leaf_fraction, val_fraction, test_fraction, layout
    )
    (out / "catalogue.json").unlink(missing_ok=True)  # marks the folder as incomplete until the end
    jobs = []
    for s, split in enumerate(SPLITS):
        (out / split).mkdir(parents=True, exist_ok=True)
        for old in (out / split).glob("*.parquet*"):  # earlier shards, and half-written ones
            old.unlink()
        idx = np.flatnonzero(split_of == s)
        n_shards = max(1, math.ceil(len(idx) / shard_size))
        for k, chunk in enumerate(np.array_split(idx, n_shards)):
            path = out / split / f"{split}-{k:05d}-of-{n_shards:05d}.parquet"
            jobs.append((str(path), chunk, leaf_of[chunk], seed, image_size, layout))
    bar = progress_bar(total=num_products, desc="generating catalogue", unit="product", disable=not progress)
    if num_proc > 1:
        with ProcessPoolExecutor(num_proc, mp_context=get_context("spawn")) as pool:
            for done in as_completed([pool.submit(_write_shard, job) for job in jobs]):
                bar.update(done.result())
    else:
        for job in jobs:
            bar.update(_write_shard(job))
    bar.close()
    sizes = {split: int((split_of == s).sum()) for s, split in enumerate(SPLITS)}
    info = {
        "generator_version": GENERATOR_VERSION,
        "args": args,
        "sizes": sizes,
        "seconds": round(time.perf_counter() - started, 1),
        "separator": PATH_SEPARATOR,
        "leaves": [
            {
                "path": list(leaf.path),
                "type": leaf.ptype,
                "variant": leaf.variant,
                "cue": leaf.cue,
                "held_out": i in held,
                "products": {
                    split: int(((leaf_of == i) & (split_of == s)).sum()) for s, split in enumerate(SPLITS)
                },
            }
            for i, leaf in enumerate(leaves)
        ],
        "held_out": [path_text(leaves[i].path) for i in held],
    }
    if layout != "demo":
        info["held_out_types"] = hard_held_out(seed, unseen_leaf_fraction)[1]
    write_json(out / "catalogue.json", info)
    return out


def generation_defaults() -> dict:
    """The arguments that define a catalogue's content, with their defaults (from `generate_catalogue`)."""
    params = inspect.signature(generate_catalogue).parameters
    return {
        k: p.default for k, p in params.items() if k not in ("output_dir", "num_proc", "progress", "layout")
    }


def catalogue_matches(output_dir: str | os.PathLike, **args) -> bool:
    """True when `output_dir` holds a finished catalogue of this generator version built with these arguments."""
    path = Path(output_dir) / "catalogue.json"
    if not path.is_file():
        return False
    info = json.loads(path.read_text())
    return (
        info.get("generator_version") == GENERATOR_VERSION
        and info.get("args") == generation_defaults() | args
    )


def save_sample_grid(
    catalogue_dir: str | os.PathLike, path: str | os.PathLike, rows: int = 6, cols: int = 8, cell: int = 128
) -> Path:
    """A PNG grid of train images with their leaf names: a quick look at what the generator draws."""
    table = pq.read_table(
        sorted((Path(catalogue_dir) / "train").glob("*.parquet"))[0], columns=["image", "category"]
    )
    n = min(rows * cols, table.num_rows)
    label_h = 28
    grid = Image.new("RGB", (cols * cell, rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=11)
    for k in range(n):
        img = Image.open(io.BytesIO(table["image"][k]["bytes"].as_py())).resize((cell, cell), Image.NEAREST)
        x, y = (k % cols) * cell, (k // cols) * (cell + label_h)
        grid.paste(img, (x, y))
        lines = [""]
        for word in table["category"][k].as_py()[-1].split():  # wrap the leaf name to the cell width
            if lines[-1] and draw.textlength(f"{lines[-1]} {word}", font=font) > cell - 6:
                lines.append(word)
            else:
                lines[-1] = f"{lines[-1]} {word}".strip()
        draw.multiline_text((x + 3, y + cell + 1), "\n".join(lines[:2]), fill="black", font=font, spacing=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return Path(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="data/demo")
    parser.add_argument("--num_products", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--unseen_leaf_fraction", type=float, default=0.15)
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--test_fraction", type=float, default=0.15)
    parser.add_argument("--shard_size", type=int, default=2000, help="products per parquet file")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sample_grid", default=None, help="also save a PNG grid of sample images here")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="demo",
        help="demo: the embedded catalogue; hard: broad parents of unlike-looking types, 145 small leaves, "
        "whole product types held out of training (new types must be placed under seen parents)",
    )
    a = parser.parse_args(argv)
    out = generate_catalogue(
        a.output_dir,
        a.num_products,
        a.seed,
        a.image_size,
        a.unseen_leaf_fraction,
        a.val_fraction,
        a.test_fraction,
        a.num_proc,
        a.shard_size,
        layout=a.layout,
    )
    info = json.loads((out / "catalogue.json").read_text())
    print(
        f"wrote {out}: {info['sizes']} in {info['seconds']} s; {len(info['held_out'])} unseen leaves: {', '.join(info['held_out'])}"
    )
    if "held_out_types" in info:
        print(f"held-out product types: {', '.join(info['held_out_types'])}")
    if a.sample_grid:
        print(f"sample grid: {save_sample_grid(out, a.sample_grid)}")


if __name__ == "__main__":
    main()

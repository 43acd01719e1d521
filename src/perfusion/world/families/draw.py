"""Drawing one instance as a sprite: flat, softly shaded vector art with a dark outline, at SPRITE pixels.

Each category's drawer puts its silhouette into the body mask (which takes the body colour and the pattern) and
its features (eyes, beak, wheels, the mug's opening, ...) into overlays drawn on top. Every drawer faces right;
the scene mirrors a sprite to face left. Geometry depends only on the instance and the pose, so the same instance
always has the same silhouette, and the pattern's layout is seeded by the instance itself.
"""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .instances import Instance
from .palette import Colour, pattern_colour, shade

SPRITE = 256  # side of the square frame the drawers' coordinates are given in
MARGIN = 96  # the canvas reaches this far beyond the frame on every side, so that extreme shapes are not cut off
CANVAS = SPRITE + 2 * MARGIN  # side of a sprite's image
GROUND = 236  # y of the ground line the pets stand on
OUTLINE_RADIUS = 3.0  # blur radius (sprite px) that grows the silhouette into its outline
SHADING_BOTTOM = 0.80  # brightness at the sprite's bottom, as a share of the top's

EYE = (25, 25, 30)
NOSE = (220, 120, 140)
BEAK = (240, 170, 40)
WINDOW = (175, 205, 225)
WHEEL = (35, 35, 38)
HUB = (170, 170, 175)
HEADLIGHT = (250, 235, 150)
INSIDE = 0.35  # an opening's brightness as a share of the body colour


class Pen:
    """ImageDraw on a canvas image, taking coordinates in the drawers' frame (the canvas's margin added)."""

    def __init__(self, image: Image.Image):
        self.draw = ImageDraw.Draw(image)

    @staticmethod
    def shifted(xy):
        if len(xy) and isinstance(xy[0], (tuple, list)):
            return [(float(x) + MARGIN, float(y) + MARGIN) for x, y in xy]
        return [float(value) + MARGIN for value in xy]

    def ellipse(self, xy, **options):
        self.draw.ellipse(self.shifted(xy), **options)

    def polygon(self, xy, **options):
        self.draw.polygon(self.shifted(xy), **options)

    def line(self, xy, **options):
        self.draw.line(self.shifted(xy), **options)

    def rectangle(self, xy, **options):
        self.draw.rectangle(self.shifted(xy), **options)

    def rounded_rectangle(self, xy, radius=0, **options):
        self.draw.rounded_rectangle(self.shifted(xy), radius, **options)

    def point(self, xy, **options):
        self.draw.point(self.shifted(xy), **options)


class Canvas:
    """A silhouette mask and a list of overlays, filled by a drawer."""

    def __init__(self):
        self.body = Image.new("L", (CANVAS, CANVAS), 0)
        self.pen = Pen(self.body)
        self.overlays: list[tuple[Image.Image, Colour]] = []
        self.pattern_axis = "vertical"  # stripes across a horizontal body; "horizontal" for mugs, vases and cars
        self.pattern_box = (0, 0, SPRITE, SPRITE)  # where a band goes

    def ellipse(self, cx, cy, rx, ry, fill=255):
        self.pen.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)

    def polygon(self, points, fill=255):
        self.pen.polygon([(float(x), float(y)) for x, y in points], fill=fill)

    def limb(self, x0, y0, x1, y1, width):
        """A straight limb with rounded ends."""
        self.pen.line((x0, y0, x1, y1), fill=255, width=int(width))
        for x, y in ((x0, y0), (x1, y1)):
            self.ellipse(x, y, width / 2, width / 2)

    def curve(self, points, width):
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            self.limb(x0, y0, x1, y1, width)

    def overlay(self, colour: Colour) -> Pen:
        """A new overlay layer of one colour; draw on the returned pen with fill=255."""
        layer = Image.new("L", (CANVAS, CANVAS), 0)
        self.overlays.append((layer, colour))
        return Pen(layer)


def _dot(pen: Pen, x, y, r):
    pen.ellipse((x - r, y - r, x + r, y + r), fill=255)


def _instance_rng(instance: Instance) -> random.Random:
    return random.Random(hashlib.sha256(repr(instance).encode()).digest())


# ---- the categories


def draw_cat(canvas: Canvas, instance: Instance, pose: str) -> None:
    s = instance.shape
    fur = canvas
    head_r = 22 + 30 * s["head"]
    ear = 8 + 34 * s["ears"]
    tail_len = 40 + 75 * s["tail"]
    curl = -1.0 + 2.6 * s["curl"]  # how far the tail bends (radians over its length)
    thick = 10 + 14 * s["build"]
    if pose == "sitting":
        body_h = 86 + 26 * s["build"] + 22 * s["legs"]
        body_w = 46 + 56 * s["build"]
        cx, cy = 112, GROUND - body_h / 2
        fur.ellipse(cx, cy, body_w / 2, body_h / 2)
        leg_x = cx + body_w * 0.28
        fur.limb(leg_x, cy, leg_x, GROUND - 6, thick)
        fur.limb(leg_x - 14, cy + 6, leg_x - 14, GROUND - 6, thick)
        hx, hy = cx + body_w * 0.28, cy - body_h / 2 - head_r * 0.55
        tail = [(cx - body_w * 0.35, GROUND - 10)]
        angle = math.pi  # along the ground, backwards, then curling up
    else:
        legs = 30 + 46 * s["legs"]
        body_h = 34 + 52 * s["build"]
        body_w = 104 + 40 * s["build"]
        cx, cy = 112, GROUND - legs - body_h / 2 + 8
        fur.ellipse(cx, cy, body_w / 2, body_h / 2)
        for x in (cx + body_w * 0.32, cx + body_w * 0.22, cx - body_w * 0.30, cx - body_w * 0.20):
            fur.limb(x, cy, x, GROUND - thick / 2, thick)
        hx, hy = cx + body_w / 2 - 6, cy - body_h / 2 - head_r * 0.35
        tail = [(cx - body_w / 2 + 8, cy - body_h * 0.15)]
        angle = math.pi * 0.85
    steps = 8
    for _ in range(steps):  # the tail bends by `curl` over its length
        angle -= curl / steps
        x, y = tail[-1]
        tail.append((x + math.cos(angle) * tail_len / steps, y - math.sin(angle) * tail_len / steps))
    fur.curve(tail, 8 + 9 * s["build"])
    for side in (-1, 1):  # ears: triangles on the head's top
        base = hx + side * head_r * 0.45
        fur.polygon(
            [
                (base - ear * 0.55, hy - head_r * 0.6),
                (base + ear * 0.55, hy - head_r * 0.6),
                (base + side * ear * 0.2, hy - head_r * 0.55 - ear * 1.25),
            ]
        )
    fur.ellipse(hx, hy, head_r, head_r * 0.92)
    _collar(canvas, instance, hx, hy, head_r)
    face = canvas.overlay(EYE)
    _dot(face, hx + head_r * 0.35, hy - head_r * 0.12, 6)
    _dot(face, hx - head_r * 0.15, hy - head_r * 0.12, 6)
    _dot(canvas.overlay(NOSE), hx + head_r * 0.2, hy + head_r * 0.25, 5)


def draw_dog(canvas: Canvas, instance: Instance, pose: str) -> None:
    s = instance.shape
    head_r = 30 + 8 * s["build"]
    snout = 10 + 46 * s["snout"]
    thick = 11 + 18 * s["build"]
    tail_len = 26 + 60 * s["tail"]
    if pose == "sitting":
        body_h = 84 + 26 * s["build"] + 22 * s["legs"]
        body_w = 50 + 56 * s["build"]
        cx, cy = 104, GROUND - body_h / 2
        canvas.ellipse(cx, cy, body_w / 2, body_h / 2)
        leg_x = cx + body_w * 0.3
        canvas.limb(leg_x, cy, leg_x, GROUND - 6, thick)
        canvas.limb(leg_x - 15, cy + 4, leg_x - 15, GROUND - 6, thick)
        hx, hy = cx + body_w * 0.3, cy - body_h / 2 - head_r * 0.5
        tail = [(cx - body_w * 0.4, GROUND - 12), (cx - body_w * 0.4 - tail_len, GROUND - 14)]
    else:
        legs = 30 + 46 * s["legs"]
        body_h = 36 + 52 * s["build"]
        body_w = 100 + 46 * s["build"]
        cx, cy = 104, GROUND - legs - body_h / 2 + 8
        canvas.ellipse(cx, cy, body_w / 2, body_h / 2)
        for x in (cx + body_w * 0.33, cx + body_w * 0.22, cx - body_w * 0.32, cx - body_w * 0.21):
            canvas.limb(x, cy, x, GROUND - thick / 2, thick)
        hx, hy = cx + body_w / 2 - 4, cy - body_h / 2 - head_r * 0.4
        start = (cx - body_w / 2 + 6, cy - body_h * 0.2)
        tail = [start, (start[0] - tail_len * 0.55, start[1] - tail_len * 0.85)]
    canvas.curve(tail, 9 + 5 * s["build"])
    canvas.ellipse(hx, hy, head_r, head_r * 0.9)
    canvas.limb(hx + head_r * 0.4, hy + head_r * 0.2, hx + head_r * 0.4 + snout, hy + head_r * 0.28, head_r * 0.75)
    ear_len = 14 + 44 * s["ears"]
    ear_w = 10 + 18 * s["ears"]
    if s["floppy"] > 0.5:  # hanging ears, longer the floppier
        droop = ear_len * (0.6 + 0.8 * (s["floppy"] - 0.5))
        ears = canvas.overlay(shade(instance.colour, 0.7))
        ears.ellipse(
            (
                hx - head_r * 0.55 - ear_w / 2,
                hy - head_r * 0.6,
                hx - head_r * 0.55 + ear_w / 2,
                hy - head_r * 0.6 + droop * 1.6,
            ),
            fill=255,
        )
    else:  # standing ears, pointier the less floppy
        point = ear_len * (1.3 - s["floppy"])
        for offset in (-0.35, 0.15):
            base = hx + offset * head_r
            canvas.polygon(
                [
                    (base - ear_w * 0.6, hy - head_r * 0.55),
                    (base + ear_w * 0.6, hy - head_r * 0.55),
                    (base - ear_w * 0.1, hy - head_r * 0.5 - point),
                ]
            )
    _collar(canvas, instance, hx - 4, hy, head_r)
    _dot(canvas.overlay(EYE), hx + head_r * 0.25, hy - head_r * 0.2, 6)
    _dot(canvas.overlay(EYE), hx + head_r * 0.4 + snout + head_r * 0.3, hy + head_r * 0.22, 7)


def draw_bird(canvas: Canvas, instance: Instance, pose: str) -> None:
    s = instance.shape
    legs = 8 + 40 * s["legs"]
    body_w = 100 + 20 * s["build"]
    body_h = 62 + 48 * s["build"]
    cx, cy = 118, GROUND - legs - body_h / 2 + 4
    canvas.ellipse(cx, cy, body_w / 2, body_h / 2)
    tail = 18 + 70 * s["tail"]
    tx, ty = cx - body_w * 0.38, cy - body_h * 0.05
    canvas.polygon(
        [(tx + 10, ty - 14), (tx + 10, ty + 14), (tx - tail, ty + 4 + tail * 0.35), (tx - tail, ty - 6 - tail * 0.15)]
    )
    head_r = 30 + 6 * s["build"]
    hx, hy = cx + body_w * 0.36, cy - body_h / 2 - head_r * 0.35
    canvas.ellipse(hx, hy, head_r, head_r)
    if s["crest"] > 1 / 3:
        crest = 14 + 40 * (s["crest"] - 1 / 3)
        for lean in (-0.5, 0.0, 0.5):
            base = hx + lean * head_r * 0.5
            canvas.polygon(
                [
                    (base - 8, hy - head_r * 0.8),
                    (base + 8, hy - head_r * 0.8),
                    (base + lean * 10 - 6, hy - head_r * 0.7 - crest),
                ]
            )
    beak = 10 + 36 * s["beak"]
    canvas.overlay(BEAK).polygon(
        [(hx + head_r * 0.8, hy - 9), (hx + head_r * 0.8, hy + 9), (hx + head_r * 0.8 + beak, hy + 2)], fill=255
    )
    wing = canvas.overlay(shade(instance.colour, 0.78))
    wing.ellipse((cx - body_w * 0.32, cy - body_h * 0.22, cx + body_w * 0.22, cy + body_h * 0.25), fill=255)
    feet = canvas.overlay(shade(BEAK, 0.7))
    for x in (cx - 10, cx + 12):
        feet.line((x, cy + body_h * 0.4, x, GROUND), fill=255, width=6)
    _dot(canvas.overlay(EYE), hx + head_r * 0.35, hy - head_r * 0.15, 6)


def draw_fish(canvas: Canvas, instance: Instance, pose: str) -> None:
    s = instance.shape
    body_w = 150
    body_h = 54 + 76 * s["height"]
    cx, cy = 140, 128
    canvas.ellipse(cx, cy, body_w / 2, body_h / 2)
    tail = 28 + 48 * s["tail"]
    tx = cx - body_w / 2 + 10
    canvas.polygon([(tx + 6, cy), (tx - tail, cy - tail * 0.85), (tx - tail * 0.7, cy), (tx - tail, cy + tail * 0.85)])
    fin = 12 + 36 * s["fins"]
    canvas.polygon([(cx - 30, cy - body_h / 2 + 8), (cx + 24, cy - body_h / 2 + 6), (cx - 20, cy - body_h / 2 - fin)])
    canvas.polygon(
        [(cx - 10, cy + body_h / 2 - 8), (cx + 20, cy + body_h / 2 - 6), (cx - 6, cy + body_h / 2 + fin * 0.6)]
    )
    eye_r = 8 + 10 * s["eye"]
    ex, ey = cx + body_w * 0.3, cy - body_h * 0.12
    _dot(canvas.overlay((245, 245, 245)), ex, ey, eye_r)
    _dot(canvas.overlay(EYE), ex + eye_r * 0.25, ey, eye_r * 0.55)


def draw_mug(canvas: Canvas, instance: Instance, pose: str) -> None:
    s = instance.shape
    canvas.pattern_axis = "horizontal"
    height = 120 + 90 * s["height"]
    top_w = 150 - 36 * s["height"]
    bottom_w = top_w * (1.0 - 0.32 * s["taper"])
    cx, bottom = 112, GROUND - 4
    top = bottom - height
    rim = 4 + 18 * s["rim"]
    canvas.polygon(
        [(cx - top_w / 2, top), (cx + top_w / 2, top), (cx + bottom_w / 2, bottom), (cx - bottom_w / 2, bottom)]
    )
    canvas.ellipse(cx, bottom, bottom_w / 2, 10)
    canvas.ellipse(cx, top, top_w / 2 + rim * 0.4, rim + 8)
    size = 0.6 + 0.6 * s["handle_size"]
    hx0, hy0 = cx + (top_w + bottom_w) / 4 - 10, top + height * 0.2
    hx1, hy1 = hx0 + 52 * size, top + height * 0.2 + height * 0.55 * size
    corner = (1.0 - s["handle"]) * 0.5 * min(hx1 - hx0, hy1 - hy0)  # round handles are ellipses, square ones boxes
    canvas.pen.rounded_rectangle((hx0, hy0, hx1, hy1), radius=max(2.0, corner), fill=255)
    hole = 14 + 4 * s["handle_size"]
    canvas.pen.rounded_rectangle(
        (hx0 + hole * 0.6, hy0 + hole, hx1 - hole, hy1 - hole), radius=max(1.0, corner - hole), fill=0
    )
    canvas.pen.polygon(
        [
            (cx - top_w / 2 + 2, top + 4),
            (cx + top_w / 2 - 2, top + 4),
            (cx + bottom_w / 2 - 2, bottom - 4),
            (cx - bottom_w / 2 + 2, bottom - 4),
        ],
        fill=255,
    )  # the body covers the handle's inner end
    canvas.pattern_box = (cx - top_w / 2, top + rim, cx + top_w / 2, bottom)
    opening = canvas.overlay(shade(instance.colour, INSIDE))
    opening.ellipse((cx - top_w / 2 + rim * 0.6, top - 8, cx + top_w / 2 - rim * 0.6, top + 8), fill=255)


def draw_teddy(canvas: Canvas, instance: Instance, pose: str) -> None:
    s = instance.shape
    body_w = 70 + 70 * s["build"]
    body_h = 88 + 40 * s["build"]
    cx = 128
    cy = GROUND - 24 - body_h / 2
    head_r = 28 + 38 * s["head"]
    hx, hy = cx, cy - body_h / 2 - head_r * 0.55
    ear_r = 7 + 25 * s["ears"]
    arm = 20 + 60 * s["arms"]
    for side in (-1, 1):
        canvas.limb(
            cx + side * body_w * 0.32, GROUND - 18, cx + side * body_w * 0.48, GROUND - 10, 26 + 18 * s["build"]
        )
        canvas.limb(
            cx + side * body_w * 0.38,
            cy - body_h * 0.25,
            cx + side * (body_w * 0.38 + arm * 0.6),
            cy - body_h * 0.25 + arm * 0.8,
            18 + 16 * s["build"],
        )
        canvas.ellipse(hx + side * head_r * 0.72, hy - head_r * 0.68, ear_r, ear_r)
    canvas.ellipse(cx, cy, body_w / 2, body_h / 2)
    canvas.ellipse(hx, hy, head_r, head_r * 0.95)
    light = shade(instance.colour, 1.35)
    muzzle = canvas.overlay(light)
    m = 9 + 22 * s["muzzle"]
    muzzle.ellipse((hx - m, hy + head_r * 0.18 - m * 0.75, hx + m, hy + head_r * 0.18 + m * 0.75), fill=255)
    inner = canvas.overlay(light)
    for side in (-1, 1):
        _dot(inner, hx + side * head_r * 0.72, hy - head_r * 0.68, ear_r * 0.55)
    face = canvas.overlay(EYE)
    for side in (-1, 1):
        _dot(face, hx + side * head_r * 0.36, hy - head_r * 0.18, 6)
    _dot(face, hx, hy + head_r * 0.1, 7)
    if instance.accessory is not None:  # a bow under the chin
        bow = canvas.overlay(instance.accessory)
        by = hy + head_r * 0.9
        bow.polygon([(hx, by), (hx - 46, by - 25), (hx - 46, by + 25)], fill=255)
        bow.polygon([(hx, by), (hx + 46, by - 25), (hx + 46, by + 25)], fill=255)
        bow.ellipse((hx - 14, by - 14, hx + 14, by + 14), fill=255)


def draw_vase(canvas: Canvas, instance: Instance, pose: str) -> None:
    s = instance.shape
    canvas.pattern_axis = "horizontal"
    height = 140 + 86 * s["height"]
    neck_len = height * (0.12 + 0.28 * s["neck"])
    belly = 44 + 22 * s["belly"] + 14 * (1 - s["height"])
    neck = 18 + 6 * (1 - s["neck"])
    lip = neck + 4 + 26 * s["lip"]
    cx, bottom = 128, GROUND - 2
    top = bottom - height
    body_top = top + neck_len
    profile = []  # (y, half width) from the top down
    for k in range(25):
        t = k / 24
        y = top + t * height
        if y < body_top:  # the neck, flaring to the lip at the top
            u = (y - top) / max(neck_len, 1)
            half = lip + (neck - lip) * min(1.0, u * 2.5)
        else:
            u = (y - body_top) / (bottom - body_top)
            half = neck + (belly - neck) * math.sin(math.pi * min(1.0, u * (0.9 + 0.5 * s["belly"]))) ** 0.8
            half = max(half, belly * 0.55 if u > 0.85 else 0)
        profile.append((y, half))
    canvas.polygon([(cx + half, y) for y, half in profile] + [(cx - half, y) for y, half in reversed(profile)])
    canvas.pattern_box = (cx - belly, body_top, cx + belly, bottom)
    opening = canvas.overlay(shade(instance.colour, INSIDE))
    opening.ellipse((cx - lip + 5, top - 5, cx + lip - 5, top + 5), fill=255)


def draw_car(canvas: Canvas, instance: Instance, pose: str) -> None:
    s = instance.shape
    canvas.pattern_axis = "horizontal"
    length = 170 + 70 * s["length"]
    wheel_r = 17 + 16 * s["wheels"]
    body_h = 44 + 8 * s["wheels"]
    cabin_h = 34 + 40 * s["cabin"]
    slope = 8 + 52 * s["slope"]
    x0 = 128 - length / 2
    x1 = x0 + length
    body_bottom = GROUND - wheel_r * 0.6
    body_top = body_bottom - body_h
    canvas.pen.rounded_rectangle((x0, body_top, x1, body_bottom), radius=14, fill=255)
    cabin_x0, cabin_x1 = x0 + length * 0.22, x0 + length * 0.72
    roof = body_top - cabin_h
    canvas.polygon(
        [
            (cabin_x0, body_top + 2),
            (cabin_x0 + slope * 0.5, roof),
            (cabin_x1 - slope, roof),
            (cabin_x1 + slope * 0.3, body_top + 2),
        ]
    )
    canvas.pattern_box = (x0, body_top, x1, body_bottom)
    windows = canvas.overlay(WINDOW)
    inset = 9
    middle = (cabin_x0 + cabin_x1) / 2
    for a, b in ((cabin_x0 + inset, middle - 4), (middle + 4, cabin_x1 - inset)):
        top_a = a + (slope * 0.5 if a < middle else 0)
        top_b = b - (slope if b > middle else 0)
        windows.polygon(
            [(a, body_top - 2), (top_a + 2, roof + inset), (top_b - 2, roof + inset), (b, body_top - 2)], fill=255
        )
    wheels, hubs = canvas.overlay(WHEEL), canvas.overlay(HUB)
    for x in (x0 + length * 0.2, x1 - length * 0.2):
        _dot(wheels, x, GROUND - wheel_r, wheel_r)
        _dot(hubs, x, GROUND - wheel_r, wheel_r * 0.42)
    _dot(canvas.overlay(HEADLIGHT), x1 - 8, body_top + body_h * 0.3, 7)


DRAWERS = {
    "cat": draw_cat,
    "dog": draw_dog,
    "bird": draw_bird,
    "fish": draw_fish,
    "mug": draw_mug,
    "teddy": draw_teddy,
    "vase": draw_vase,
    "car": draw_car,
}


def _collar(canvas: Canvas, instance: Instance, hx: float, hy: float, head_r: float) -> None:
    if instance.accessory is not None:
        collar = canvas.overlay(instance.accessory)
        collar.line((hx - head_r * 0.85, hy + head_r * 0.5, hx + head_r * 0.15, hy + head_r * 1.05), fill=255, width=26)


# ---- patterns


def pattern_mask(instance: Instance, canvas: Canvas) -> Image.Image | None:
    """Where the second colour goes (L), before it is clipped to the silhouette; None for plain instances."""
    if instance.pattern == "plain":
        return None
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    pen = Pen(mask)
    rng = _instance_rng(instance)
    scale = instance.pattern_scale
    low, high = -MARGIN, SPRITE + MARGIN  # the whole canvas, in the frame's coordinates
    if instance.pattern == "stripes":
        width = 22 + 18 * scale
        offset = rng.uniform(0, 2 * width)
        position = -offset
        while position > low:  # the stripes keep their phase in the frame, and cover the margin too
            position -= 2.2 * width
        while position < high:
            box = (
                (position, low, position + width, high)
                if canvas.pattern_axis == "vertical"
                else (low, position, high, position + width)
            )
            pen.rectangle(box, fill=255)
            position += 2.2 * width
    elif instance.pattern == "spots":
        radius = 12 + 11 * scale
        spacing = radius * 3.1
        before = int(MARGIN / spacing) + 1  # rows and columns in the margin, before the frame's first
        for row in range(-before, int(high / spacing) + 2):
            for column in range(-before, int(high / spacing) + 2):
                x = (column + 0.5 * (row % 2)) * spacing + rng.uniform(-0.2, 0.2) * spacing
                y = row * spacing + rng.uniform(-0.2, 0.2) * spacing
                pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    elif instance.pattern == "patches":
        x0, y0, x1, y1 = 40, 60, 216, 236
        for _ in range(3):
            radius = 26 + 26 * scale
            x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
            pen.ellipse((x - radius, y - radius * 0.8, x + radius, y + radius * 0.8), fill=255)
    elif instance.pattern == "band":
        x0, y0, x1, y1 = canvas.pattern_box
        width = 22 + 30 * scale
        middle = y0 + (y1 - y0) * rng.uniform(0.35, 0.6)
        pen.rectangle((low, middle - width / 2, high, middle + width / 2), fill=255)
    return mask


# ---- putting it together


def _shading() -> Image.Image:
    """A vertical ramp that multiplies the sprite's colours: unchanged at the top, SHADING_BOTTOM at the bottom."""
    y = np.clip((np.arange(CANVAS, dtype=np.float32) - MARGIN) / (SPRITE - 1), 0.0, 1.0)  # 0 at the frame's top
    ramp = (255 + (255 * SHADING_BOTTOM - 255) * y).astype(np.uint8)
    return Image.fromarray(np.repeat(np.broadcast_to(ramp[:, None], (CANVAS, CANVAS))[..., None], 3, axis=2))


_SHADE = _shading()
_OUTLINE_GAIN = [min(255, 3 * value) for value in range(256)]  # the blurred silhouette's edge, made solid


def draw(instance: Instance, pose: str = "standing") -> Image.Image:
    """The instance facing right, as an RGBA sprite of CANVAS x CANVAS pixels (alpha: the object, outline included;
    the drawers' SPRITE frame sits MARGIN pixels in)."""
    canvas = Canvas()
    DRAWERS[instance.category](canvas, instance, pose if pose in instance.family.poses else "standing")
    colours = Image.new("RGB", (CANVAS, CANVAS), tuple(instance.colour))
    pattern = pattern_mask(instance, canvas)
    if pattern is not None:
        colours.paste(pattern_colour(instance.colour, instance.second_colour), mask=pattern)
    cover = canvas.body
    for layer, tint in canvas.overlays:  # features on top, over the silhouette or beside it
        colours.paste(tuple(tint), mask=layer)
        cover = ImageChops.lighter(cover, layer)
    colours = ImageChops.multiply(colours, _SHADE)
    outline = cover.filter(ImageFilter.GaussianBlur(OUTLINE_RADIUS)).point(_OUTLINE_GAIN)
    sprite = Image.new("RGB", (CANVAS, CANVAS), shade(instance.colour, 0.4))
    sprite.paste(colours, mask=cover)
    sprite.putalpha(ImageChops.lighter(cover, outline))
    return sprite

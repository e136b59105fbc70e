"""A rule-based reading of a scene, the way the annotators read one (no training, no weights).

The learnt judge (:mod:`.judge`) reads 99 % of *rendered* scenes right and generated ones at chance
(softer edges, rounded corners, other backgrounds). This reader uses only what a person uses and what
the world defines, so it has nothing to over-fit to renders:

1. **background**: the median colour of the image's border ring;
2. **colour**: each pixel's difference from the background, projected on the chroma plane (the
   component orthogonal to grey), gives a hue and a strength; pixels stronger than ``FOREGROUND`` are
   foreground; a connected foreground region is one object of its mean hue's palette colour (magenta
   is purple, orange is red or yellow, as the annotators accepted), unless its hues spread widely
   (``HUE_SPREAD``: touching objects of two colours), when it splits by palette colour;
3. **objects**: each region's soft coverage (its pixels' colour difference projected on its own core
   colour) gives its mass and centre; a region lighter than ``MIN_MASS`` pixels of coverage, or
   fainter than ``MIN_STRENGTH`` of its palette colour's strength, is a smudge, not an object;
4. **shape**: the coverage is compared with triangles and with superellipses (ovals to squares) of
   the same mass and centre over rotations, aspects and blurs; a region none fits (``MISFIT``) is
   malformed (``blob``: merged objects, a hook, a lobe), and a malformed region with the mass of two
   or more of the world's largest objects counts as that many. Circle or square is told by the
   outline's 4-fold harmonic (:func:`squareness`, boundary ``SQUARE_CORNERS``);
5. **grades** (:func:`grade_objects`) follow the annotators' written rules: named objects are paired
   with drawn ones; count, each drawn named object's colour and shape, and the relation of the two
   named objects' centres.

Every threshold is a property of the world's geometry and palette, measured on its own shapes (the
constants' comments say how), not fitted to labelled images; ``benchmarks/judge_agreement.py``
measures the result against people.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from . import world
from .world import BLOB, COLOURS, JUDGE_SHAPES, RES

#: chroma strength (0-1 scale) above which a pixel belongs to some object
FOREGROUND = 0.12
#: a region lighter than this many pixels of full coverage is a smudge (the world's smallest object,
#: a triangle of r = 3.6 shrunk twice when crowded, covers ~24 px)
MIN_MASS = 9.0
#: the world's mean single-object area (r = 4.3 on average: circle 58, square 53, triangle 41 px)
TYPICAL_MASS = 50.0
#: a region whose core is fainter than this share of its palette colour's strength is a smudge
MIN_STRENGTH = 0.35
#: mean squared coverage error (per covered pixel) above which no shape fits: a malformed object. The
#: world's well-drawn shapes fit to at most 0.051 at any blur up to 1 px (300 random scenes); its near
#: misses (world.malform) exceed it 20-70 % of the time, by kind -- mild ones read as their shape
MISFIT = 0.060
#: superellipse exponents tried for the round-or-square family's template fit (2: an ellipse, 12: a
#: square with slightly soft corners) -- it tells round-or-square from triangle and from malformed
EXPONENTS = (2.0, 2.5, 3.0, 4.0, 6.0, 12.0)
#: circle or square is told by the outline's 4-fold harmonic (:func:`squareness`). Measured on the
#: world's geometry: circles and 1.3:1 ovals 0.000-0.008 at any blur; a square whose corners are
#: rounded by half its half-side 0.03-0.05, by three quarters 0.013-0.024 (blur 0.6-1 px). The boundary
#: is that last one: a square rounded by up to 3/4 of its half-side still reads as a square.
SQUARE_CORNERS = 0.015
#: width/height ratios tried (a person still calls an oval a circle, a wide square a square)
ASPECTS = (1.0, 1.3)
#: blurs (pixels) the shapes are tried with: renders are sharp, generators' edges are soft
BLURS = (0.0, 0.6, 1.1)
#: window half-size around an object's centre in which shapes are compared
HALF = 9
SUPER = 4



def _chroma(rgb: np.ndarray) -> np.ndarray:
    """The chroma-plane coordinates ``[..., 2]`` of colour differences ``[..., 3]`` (grey -> 0)."""
    u = np.array([1.0, -0.5, -0.5]) / np.sqrt(1.5)
    v = np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)
    return np.stack([rgb @ u, rgb @ v], axis=-1)


def _palette() -> tuple[np.ndarray, np.ndarray]:
    rgb = np.array(list(COLOURS.values()))
    c = _chroma(rgb - rgb.mean(-1, keepdims=True))
    return np.arctan2(c[:, 1], c[:, 0]), np.linalg.norm(c, axis=-1)


PALETTE_HUE, PALETTE_STRENGTH = _palette()


@dataclass
class Found:
    """One object the reader found."""

    colour: str
    shape: str  # one of JUDGE_SHAPES
    x: float  # centre, pixels
    y: float
    mass: float  # pixels of full coverage
    fit: dict  # shape -> best mean squared coverage error
    copies: int = 1  # merged objects this region holds (> 1 only for a malformed region)
    corners: float = 0.0  # :func:`squareness` of its outline
    strength: float = 1.0  # its core's chroma strength / its palette colour's
    hue_error: float = 0.0  # |its core's hue - its palette colour's hue|, radians


def background(img: np.ndarray) -> np.ndarray:
    """The background colour: the median of the 2-pixel border ring ``[3]``."""
    ring = np.concatenate([img[:, :2, :].reshape(3, -1), img[:, -2:, :].reshape(3, -1),
                           img[:, 2:-2, :2].reshape(3, -1), img[:, 2:-2, -2:].reshape(3, -1)], axis=1)
    return np.median(ring, axis=1)


def _hue_class(hue: np.ndarray) -> np.ndarray:
    d = np.abs(np.angle(np.exp(1j * (np.asarray(hue)[..., None] - PALETTE_HUE))))
    return d.argmin(-1)


def _grid(fx: float, fy: float) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled window coordinates relative to the object's centre."""
    n = (2 * HALF + 1) * SUPER
    t = (np.arange(n) + 0.5) / SUPER
    py, px = np.meshgrid(t - HALF - fy, t - HALF - fx, indexing="ij")
    return px, py


def _pool(masks: np.ndarray) -> np.ndarray:
    size = 2 * HALF + 1
    return masks.reshape(len(masks), size, SUPER, size, SUPER).mean(axis=(2, 4))


def _blurred(cover: np.ndarray) -> list[np.ndarray]:
    return [cover if b == 0 else ndimage.gaussian_filter(cover, (0, b, b), mode="constant") for b in BLURS]


def _round_family(px, py, mass: float) -> tuple[np.ndarray, list[float]]:
    """Superellipses |x/a|^p + |y/b|^p <= 1 of area ``mass`` at every exponent, aspect and angle."""
    from math import gamma
    masks, ps = [], []
    for p in EXPONENTS:
        unit = 4 * gamma(1 + 1 / p) ** 2 / gamma(1 + 2 / p)  # area of the p-ball of radius 1
        for aspect in ASPECTS:
            b = np.sqrt(mass / (unit * aspect))
            a = aspect * b
            angles = (0.0,) if (p == 2 and aspect == 1) else \
                np.linspace(0, np.pi if aspect != 1 else (np.pi / 2 if p > 2 else np.pi), 8, endpoint=False)
            for th in angles:
                c, s = np.cos(th), np.sin(th)
                x, y = c * px + s * py, -s * px + c * py
                masks.append((np.abs(x / a) ** p + np.abs(y / b) ** p) <= 1)
                ps.append(p)
    return _pool(np.array(masks, dtype=np.float32)), ps


def _triangle_family(px, py, mass: float) -> np.ndarray:
    """Triangles (isosceles, height/base from equilateral to 1.5x either way) of area ``mass`` at 12 angles."""
    masks = []
    for stretch in (1 / 1.5, 1.0, 1.5):
        # equilateral of circumradius R: base sqrt(3) R, height 1.5 R; stretched along its height
        r = np.sqrt(mass / (3 * np.sqrt(3) / 4 * stretch))
        for th in np.linspace(0, 2 * np.pi, 24, endpoint=False):
            c, s = np.cos(th), np.sin(th)
            x, y = c * px + s * py, -s * px + c * py
            # apex up (-y); centroid at the origin
            verts = np.array([[0, -r * stretch], [np.sqrt(3) / 2 * r, r * stretch / 2], [-np.sqrt(3) / 2 * r, r * stretch / 2]])
            inside = np.ones(px.shape, dtype=bool)
            for i in range(3):
                (x1, y1), (x2, y2) = verts[i], verts[(i + 1) % 3]
                inside &= (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0
            masks.append(inside)
    return _pool(np.array(masks, dtype=np.float32))


def _fit(cover: np.ndarray, cx: float, cy: float, mass: float) -> dict[str, float]:
    """Best mean squared error per shape (``circle``, ``square``, ``triangle``, and ``round`` -- the
    round-or-square family's best)."""
    px, py = _grid(cx - np.floor(cx), cy - np.floor(cy))
    rounds, ps = _round_family(px, py, mass)
    tris = _triangle_family(px, py, mass)
    e_r = np.array([((cover - t) ** 2).sum(axis=(1, 2)) for t in _blurred(rounds)]) / mass  # [blur, template]
    e_t = np.array([((cover - t) ** 2).sum(axis=(1, 2)) for t in _blurred(tris)]) / mass
    err_r, ps = e_r.min(0), np.array(ps)
    best = e_r if e_r.min() <= e_t.min() else e_t
    return {"circle": float(err_r[ps == 2].min()), "square": float(err_r[ps >= 4].min()),
            "triangle": float(e_t.min()), "round": float(err_r.min()),
            "blur": float(BLURS[np.unravel_index(best.argmin(), best.shape)[0]])}


def _window(a: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """The ``2*HALF+1`` window of ``a`` whose pixel HALF holds the pixel floor(cx), floor(cy)."""
    size = 2 * HALF + 1
    pad = np.pad(a, HALF + 1)
    x0, y0 = int(np.floor(cx)) + 1, int(np.floor(cy)) + 1
    return pad[y0: y0 + size, x0: x0 + size]


def radial_profile(cover: np.ndarray, cx: float, cy: float, n: int = 64, level: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The object's outline as a distance from its centre per direction: where its coverage, read along
    ``n`` rays (bilinear), first falls below ``level``. Returns the angles and the distances (pixels)."""
    theta = np.arange(n) * 2 * np.pi / n
    step = 0.05
    t = np.arange(0, HALF, step)
    xs = cx - 0.5 + np.cos(theta)[:, None] * t
    ys = cy - 0.5 + np.sin(theta)[:, None] * t
    v = ndimage.map_coordinates(cover, [ys.ravel(), xs.ravel()], order=1, mode="constant").reshape(n, -1)
    below = v < level
    below[:, 0] = False
    i = np.where(below.any(1), below.argmax(1), len(t) - 1)
    a, b = v[np.arange(n), i - 1], v[np.arange(n), i]
    return theta, t[i - 1] + (a - level) / np.maximum(a - b, 1e-9) * step


def squareness(cover: np.ndarray, cx: float, cy: float) -> float:
    """The 4-fold harmonic of the outline's distance from the centre, relative to its mean: ~0 for a
    circle or an oval, 0.06 for a sharp square; rotation-invariant."""
    theta, r = radial_profile(cover, cx, cy)
    return float(abs((r * np.exp(4j * theta)).mean()) / r.mean())


def _shape_of(fit: dict[str, float], corners: float) -> str:
    if min(fit["round"], fit["triangle"]) > MISFIT:
        return BLOB
    if fit["triangle"] < fit["round"]:
        return "triangle"
    return "square" if corners >= SQUARE_CORNERS else "circle"


#: a region splits into objects of two colours only when its hues spread this far (radians) around
#: their mean; a single object's hues stay close (an orange object is one object, whichever side of
#: the red/yellow boundary its mean falls)
HUE_SPREAD = 0.35


def _colour_groups(region: np.ndarray, hue: np.ndarray, strength: np.ndarray, colour: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The region's objects by colour: one group (its mean hue's colour) unless its hues spread widely,
    then one group per palette colour holding at least MIN_MASS pixels (other pixels join the nearest)."""
    w = strength[region]
    z = (w * np.exp(1j * hue[region])).sum() / w.sum()
    spread = np.sqrt(max(0.0, -2 * np.log(max(abs(z), 1e-9))))  # circular standard deviation
    if spread <= HUE_SPREAD:
        return [(int(_hue_class(np.array(np.angle(z)))), region)]
    classes = colour[region]
    keep = [k for k in np.unique(classes) if (classes == k).sum() >= MIN_MASS]
    if len(keep) <= 1:
        return [(int(_hue_class(np.array(np.angle(z)))), region)]
    d = np.abs(np.angle(np.exp(1j * (hue[region][:, None] - PALETTE_HUE[keep]))))
    nearest = np.array(keep)[d.argmin(-1)]
    groups = []
    for k in keep:
        g = np.zeros_like(region)
        g[region] = nearest == k
        groups.append((int(k), g))
    return groups


_CACHE: dict[bytes, list[Found]] = {}
_CACHE_SIZE = 4096


def find_objects(img: np.ndarray) -> list[Found]:
    """The objects of one image ``[3, H, W]`` in [0, 1] (resized to the world's 32 px first). The last
    few thousand images' readings are kept, so the judge and scene-fid read each image once."""
    img = np.asarray(img, dtype=np.float64)
    key = hashlib.blake2b(img.tobytes() + str(img.shape).encode(), digest_size=16).digest()
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _find_objects(img)
    return [replace(o) for o in _CACHE[key]]


def _find_objects(img: np.ndarray) -> list[Found]:
    if img.shape[-1] != RES or img.shape[-2] != RES:
        zoom = (1, RES / img.shape[-2], RES / img.shape[-1])
        img = np.clip(ndimage.zoom(img, zoom, order=1), 0, 1)
    diff = np.moveaxis(img, 0, -1) - background(img)  # [H, W, 3]
    c = _chroma(diff)
    strength = np.linalg.norm(c, axis=-1)
    hue = np.arctan2(c[..., 1], c[..., 0])
    colour = _hue_class(hue)
    fg = strength > FOREGROUND
    labels, n = ndimage.label(fg, structure=np.ones((3, 3)))
    groups = []
    for i in range(1, n + 1):
        groups += _colour_groups(labels == i, hue, strength, colour)
    taken = fg
    ys, xs = np.mgrid[0:RES, 0:RES] + 0.5
    found: list[Found] = []
    for k, region in groups:
        core_strength = np.sort(strength[region])[-max(1, int(region.sum()) // 4):]
        core = region & (strength >= core_strength.min())
        u = diff[core].mean(0)
        cu = _chroma(u)
        if np.linalg.norm(cu) < MIN_STRENGTH * PALETTE_STRENGTH[k]:
            continue
        # soft coverage: the region and its 1-pixel rim (edge pixels below the threshold), not other regions
        area = ndimage.binary_dilation(region, structure=np.ones((3, 3))) & ~(taken & ~region)
        cover = np.where(area, np.clip(diff @ u / (u @ u), 0, 1), 0.0)
        mass = float(cover.sum())
        if mass < MIN_MASS:
            continue
        cx, cy = float((cover * xs).sum() / mass), float((cover * ys).sum() / mass)
        fit = _fit(_window(cover, cx, cy), cx, cy, mass)
        corners = squareness(cover, cx, cy)
        shape = _shape_of(fit, corners)
        hue_error = abs(float(np.angle(np.exp(1j * (np.arctan2(cu[1], cu[0]) - PALETTE_HUE[k])))))
        found.append(Found(list(COLOURS)[k], shape, cx, cy, mass, fit, 1, corners,
                           float(np.linalg.norm(cu) / PALETTE_STRENGTH[k]), hue_error))
    # merged objects: a region no shape fits holds as many objects as its mass holds typical ones (the
    # median of this image's well-formed objects, else the world's mean object) -- "two merged triangles"
    whole = [o.mass for o in found if min(o.fit["round"], o.fit["triangle"]) <= MISFIT]
    unit = float(np.median(whole)) if whole else TYPICAL_MASS
    for o in found:
        if min(o.fit["round"], o.fit["triangle"]) > MISFIT:
            o.copies = max(1, int(np.floor(o.mass / unit + 0.5)))
    return found


def reading(objects: list[Found]) -> tuple[np.ndarray, np.ndarray]:
    """Counts ``[6, 4]`` (clipped at MAX_COUNT) and mean centres ``[6, 4, 2]`` in [0, 1], the judge's table."""
    return world.labels_of([o for o in objects for _ in range(o.copies)])


def read(images) -> tuple[np.ndarray, np.ndarray]:
    """The reading of a batch ``[B, 3, H, W]`` (tensor or array in [0, 1]): counts ``[B, 6, 4]`` and
    centres ``[B, 6, 4, 2]`` -- the same table :func:`judge.read` gives, so :func:`judge.grade_reading`
    grades either."""
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    out = [reading(find_objects(im)) for im in arr]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def _matching(slots: list[tuple[str, str]], found: list[Found]) -> list[int | None]:
    """The found object each named slot (colour, shape) is matched to (None: missing): the one-to-one
    matching with the most agreeing attributes (2 colour and shape, 1 either, 0 none: unmatched),
    ties broken by the earliest objects -- a person pairing the named objects with the drawn ones."""
    best: tuple[int, list[int | None]] = (-1, [None] * len(slots))

    def score(j: int, slot: tuple[str, str]) -> int:
        return (found[j].colour == slot[0]) + (found[j].shape == slot[1])

    def walk(i: int, used: frozenset, acc: list[int | None], total: int) -> None:
        nonlocal best
        if i == len(slots):
            if total > best[0]:
                best = (total, list(acc))
            return
        for j in range(len(found)):
            if j not in used and score(j, slots[i]) > 0:
                walk(i + 1, used | {j}, acc + [j], total + score(j, slots[i]))
        walk(i + 1, used, acc + [None], total)

    walk(0, frozenset(), [], 0)
    return best[1]


def grade_objects(spec: world.Spec, objects: list[Found]) -> dict[str, bool | None]:
    """Right/wrong per category for one image, by the annotators' rules (shared/human-labels README):

    * ``count``    the number of objects drawn (merged objects counted as what they hold) is the prompt's;
    * ``colour``   every named object that is drawn has its colour (a missing or extra object is a
                   count mistake, not a colour one);
    * ``shape``    every named object that is drawn has its shape (a malformed or ambiguous one has none);
    * ``relation`` (relation prompts) both named objects are drawn and the second one's centre lies
                   on the named side of the first's, along the dominant axis;
    * ``all``      all of these, and every named object drawn with both its colour and shape.
    """
    found = [o for o in objects for _ in range(o.copies)]
    n = spec.count if spec.relation is None else 1
    slots = [(o.colour, o.shape) for o in spec.objects for _ in range(n)]
    match = _matching(slots, found)
    pairs = [(slot, found[j]) for slot, j in zip(slots, match) if j is not None]
    out: dict[str, bool | None] = {
        "count": len(found) == len(slots),
        "colour": all(o.colour == c for (c, _), o in pairs),
        "shape": all(o.shape == sh for (_, sh), o in pairs),
        "relation": None,
    }
    ok = out["count"] and len(pairs) == len(slots) and out["colour"] and out["shape"]
    if spec.relation is not None:
        rel = False
        if None not in match:
            a, b = found[match[0]], found[match[1]]
            dx, dy = b.x - a.x, b.y - a.y
            rel = bool(dx > abs(dy)) if spec.relation == "left of" else bool(dy > abs(dx))
        out["relation"] = rel
        ok = ok and rel
    out["all"] = bool(ok)
    return out


def grade(images, prompts) -> tuple[list[dict[str, bool | None]], np.ndarray]:
    """Per image, :func:`grade_objects` of its prompt, and the count table ``[B, 6, 4]`` of what was read."""
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if len(arr) != len(prompts):
        raise ValueError(f"scenes judge: {len(arr)} images but {len(prompts)} prompts")
    grades, counts = [], []
    for im, p in zip(arr, prompts):
        objs = find_objects(im)
        grades.append(grade_objects(world.parse(p), objs))
        counts.append(reading(objs)[0])
    return grades, np.stack(counts) if counts else np.zeros((0, len(COLOURS), len(JUDGE_SHAPES)), np.int64)


#: names of :func:`statistics`' entries
STATISTICS = ("objects", "mass", "misfit", "malformed", "blur", "strength", "hue_error", "corners_spread",
              "background", "background_chroma")


def statistics(img: np.ndarray) -> np.ndarray:
    """What makes a scene look drawn well or badly, as numbers ``[len(STATISTICS)]`` (scene-fid's features):
    the number of objects, their mean size (in the world's mean objects), how badly the best shape fits
    (x10) and the share that none fits, the edge blur of the best fit (pixels), the colours' strength
    against the palette's and their hue error (radians), how far circles and squares sit from the
    nearest clean shape's squareness (x10; a shape between the two is neither), and the background's
    grey level and chroma."""
    img = np.asarray(img, dtype=np.float64)
    objs = find_objects(img)
    bg = background(img)
    out = np.zeros(len(STATISTICS))
    out[0] = sum(o.copies for o in objs)
    if objs:
        misfit = np.array([min(o.fit["round"], o.fit["triangle"]) for o in objs])
        out[1] = np.mean([o.mass for o in objs]) / TYPICAL_MASS
        out[2] = misfit.mean() * 10
        out[3] = float((misfit > MISFIT).mean())
        out[4] = np.mean([o.fit["blur"] for o in objs])
        out[5] = np.mean([o.strength for o in objs])
        out[6] = np.mean([o.hue_error for o in objs])
        rs = [min(o.corners, abs(o.corners - 0.06)) for o in objs if o.shape in ("circle", "square")]
        out[7] = float(np.mean(rs)) * 10 if rs else 0.0
    out[8] = float(bg.mean())
    out[9] = float(np.linalg.norm(_chroma(bg - bg.mean())))
    return out

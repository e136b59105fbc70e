"""The scenes world: procedurally drawn 32x32 RGB scenes from compositional prompts.

A miniature of GenEval's categories: **colour** (6), **shape** (3), **count** (1-3) and **relative
position** ("left of", "above"). Two kinds of prompt:

* counting:  ``"a red circle"``, ``"two blue squares"``, ``"three yellow triangles"``
* relation:  ``"a red circle left of a green square"``, ``"a blue triangle above a purple circle"``

Everything is deterministic per seed (:func:`render` draws a prompt's scene from a ``numpy`` generator)
and offline. A fixed, seed-independent split holds out whole **attribute combinations**: a held-out
prompt (e.g. ``"two cyan triangles"``, or ``"a red square above a blue circle"``) never appears in any
training data of the generator or of the reward, although each of its attributes does.

Images are floats in [0, 1], ``[3, 32, 32]``; objects are drawn anti-aliased (4x supersampled) on a
dark grey background, with small random jitter of colour, size, rotation and position.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

RES = 32
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.70, 0.18),
    "blue": (0.15, 0.28, 0.95),
    "yellow": (0.95, 0.85, 0.12),
    "purple": (0.62, 0.20, 0.80),
    "cyan": (0.10, 0.80, 0.85),
}
SHAPES = ("circle", "square", "triangle")
#: the judge's extra shape class: a malformed object (ragged, star-shaped, smeared, merged)
BLOB = "blob"
JUDGE_SHAPES = SHAPES + (BLOB,)
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
WORD_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
RELATIONS = ("left of", "above")
MAX_COUNT = 3  # the judge counts 0..3 per (colour, shape); 3 means "3 or more"

#: one in HELDOUT_MOD attribute combinations is held out (by a fixed hash, not by a seed)
HELDOUT_MOD = 5


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str


@dataclass(frozen=True)
class Spec:
    """A parsed prompt: ``count`` copies of ``objects[0]`` (counting), or two objects and a relation."""

    objects: tuple[Obj, ...]
    count: int = 1
    relation: str | None = None  # objects[0] <relation> objects[1]

    @property
    def kind(self) -> str:
        return "relation" if self.relation else "count"

    def cells(self) -> list[tuple[int, int]]:
        """Each object's (colour, judge shape) cell of the count table, in the prompt's order."""
        colours, shapes = list(COLOURS), list(JUDGE_SHAPES)
        return [(colours.index(o.colour), shapes.index(o.shape)) for o in self.objects]

    def table(self) -> np.ndarray:
        """Expected count per (colour, judge shape): ``[6, 4]`` ints."""
        t = np.zeros((len(COLOURS), len(JUDGE_SHAPES)), dtype=np.int64)
        n = self.count if self.relation is None else 1
        for cell in self.cells():
            t[cell] += n
        return t


def _plural(shape: str) -> str:
    return shape + "s"


def prompt_of(spec: Spec) -> str:
    if spec.relation is None:
        o = spec.objects[0]
        noun = o.shape if spec.count == 1 else _plural(o.shape)
        return f"{COUNT_WORDS[spec.count]} {o.colour} {noun}"
    a, b = spec.objects
    return f"a {a.colour} {a.shape} {spec.relation} a {b.colour} {b.shape}"


_OBJ = r"(a|an|one|two|three) (\w+) (\w+?)s?"
_COUNT_RE = re.compile(rf"^{_OBJ}$")
_REL_RE = re.compile(rf"^{_OBJ} (left of|above) {_OBJ}$")


def parse(prompt: str) -> Spec:
    """The :class:`Spec` of a prompt of this world; ``ValueError`` naming the prompt otherwise."""
    text = " ".join(prompt.lower().strip().rstrip(".").split())
    m = _REL_RE.match(text)
    if m:
        c1, col1, sh1, rel, c2, col2, sh2 = m.groups()
        if WORD_COUNTS[c1] != 1 or WORD_COUNTS[c2] != 1:
            raise ValueError(f"scenes: relation prompts name one object on each side: '{prompt}'")
        objs = (_obj(col1, sh1, prompt), _obj(col2, sh2, prompt))
        if objs[0] == objs[1]:
            raise ValueError(f"scenes: the two objects of a relation must differ: '{prompt}'")
        return Spec(objs, 1, rel)
    m = _COUNT_RE.match(text)
    if m:
        c, col, sh = m.groups()
        return Spec((_obj(col, sh, prompt),), WORD_COUNTS[c], None)
    raise ValueError(
        f"scenes: cannot read the prompt '{prompt}'; expected e.g. 'two red circles' or "
        f"'a red circle left of a blue square' (colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)})"
    )


def _obj(colour: str, shape: str, prompt: str) -> Obj:
    if colour not in COLOURS:
        raise ValueError(f"scenes: unknown colour '{colour}' in '{prompt}' (known: {', '.join(COLOURS)})")
    if shape not in SHAPES:
        raise ValueError(f"scenes: unknown shape '{shape}' in '{prompt}' (known: {', '.join(SHAPES)})")
    return Obj(colour, shape)


# ----------------------------------------------------------------------------- prompts and the split


def all_specs() -> list[Spec]:
    objs = [Obj(c, s) for c in COLOURS for s in SHAPES]
    out = [Spec((o,), n, None) for n in (1, 2, 3) for o in objs]
    out += [Spec((a, b), 1, r) for r in RELATIONS for a, b in itertools.permutations(objs, 2)]
    return out


def is_heldout(spec: Spec) -> bool:
    """Fixed split of attribute combinations (a hash of the prompt, independent of any seed)."""
    digest = hashlib.sha256(prompt_of(spec).encode()).digest()
    return digest[0] % HELDOUT_MOD == 0


def split_prompts(split: str) -> list[str]:
    """Every prompt of the ``train`` or ``heldout`` split, in a fixed order."""
    if split not in ("train", "heldout"):
        raise ValueError(f"scenes: split must be 'train' or 'heldout', got '{split}'")
    want = split == "heldout"
    return [prompt_of(s) for s in all_specs() if is_heldout(s) == want]


# ----------------------------------------------------------------------------- rendering


@dataclass
class Placed:
    colour: str
    shape: str  # one of JUDGE_SHAPES
    x: float  # centre, pixels
    y: float
    r: float
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    angle: float = 0.0
    malform: str | None = None  # near-miss kind when shape == BLOB
    star: tuple = field(default_factory=tuple)


def _polygon_mask(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon for the points (px, py)."""
    inside = np.zeros(px.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        x1, y1 = verts[i]
        x2, y2 = verts[(i + 1) % n]
        cond = (y1 > py) != (y2 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = (x2 - x1) * (py - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= cond & (px < xint)
    return inside


def _regular(n: int, radius: float, angle: float, phase: float) -> np.ndarray:
    a = phase + angle + np.arange(n) * 2 * np.pi / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _shape_mask(o: Placed, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    dx, dy = px - o.x, py - o.y
    if o.shape == "circle":
        return dx * dx + dy * dy <= o.r * o.r
    if o.shape == "square":
        return _polygon_mask(dx, dy, _regular(4, o.r * 1.2, o.angle, np.pi / 4))
    if o.shape == "triangle":
        # pointing up (image y grows downwards), centroid at the centre
        return _polygon_mask(dx, dy, _regular(3, o.r * 1.3, o.angle, -np.pi / 2))
    # BLOB: a near miss -- a star-shaped / ragged polygon given by per-vertex radii
    n = len(o.star)
    a = o.angle + np.arange(n) * 2 * np.pi / n
    verts = np.stack([np.array(o.star) * o.r * np.cos(a), np.array(o.star) * o.r * np.sin(a)], axis=1)
    return _polygon_mask(dx, dy, verts)


def draw(objects: Sequence[Placed], background: float, rng: np.random.Generator | None = None,
         blur: float = 0.0) -> np.ndarray:
    """The image ``[3, RES, RES]`` (float32 in [0, 1]) of placed objects on a grey background."""
    img = np.full((3, RES, RES), background, dtype=np.float32)
    s = SUPERSAMPLE
    for o in objects:
        pad = o.r * 1.6 + 1
        x0, x1 = max(0, int(o.x - pad)), min(RES, int(np.ceil(o.x + pad)) + 1)
        y0, y1 = max(0, int(o.y - pad)), min(RES, int(np.ceil(o.y + pad)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        ys = y0 + (np.arange((y1 - y0) * s) + 0.5) / s
        xs = x0 + (np.arange((x1 - x0) * s) + 0.5) / s
        py, px = np.meshgrid(ys, xs, indexing="ij")
        m = _shape_mask(o, px, py).astype(np.float32)
        cover = m.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))
        if o.malform == "smear" and rng is not None:
            cover = _blur(cover, 1.4)
        rgb = np.asarray(o.rgb, dtype=np.float32)[:, None, None]
        img[:, y0:y1, x0:x1] = img[:, y0:y1, x0:x1] * (1 - cover) + rgb * cover
    if blur > 0:
        img = np.stack([_blur(c, blur) for c in img])
    return np.clip(img, 0, 1).astype(np.float32)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(a, r, mode="edge")
    p = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, p)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, p)


def _jitter_rgb(colour: str, rng: np.random.Generator) -> tuple[float, float, float]:
    base = np.asarray(COLOURS[colour])
    return tuple(np.clip(base + rng.uniform(-0.05, 0.05, 3), 0, 1).tolist())


def _new(colour: str, shape: str, rng: np.random.Generator) -> Placed:
    return Placed(colour, shape, 0.0, 0.0, float(rng.uniform(3.6, 5.0)), _jitter_rgb(colour, rng),
                  float(rng.uniform(-0.2, 0.2)))


def _fits(o: Placed, others: Iterable[Placed]) -> bool:
    m = o.r * 1.2
    if not (m <= o.x <= RES - m and m <= o.y <= RES - m):
        return False
    return all(np.hypot(o.x - p.x, o.y - p.y) > (o.r + p.r) * 1.15 + 1.0 for p in others)


def _place_free(o: Placed, others: list[Placed], rng: np.random.Generator) -> None:
    for attempt in range(2000):
        if attempt and attempt % 200 == 0:
            o.r *= 0.92  # crowded: draw this object a little smaller
        o.x, o.y = rng.uniform(o.r, RES - o.r, 2)
        if _fits(o, others):
            return
    raise RuntimeError("scenes: could not place an object")  # pragma: no cover - never at <= 4 objects


def _place_pair(a: Placed, b: Placed, relation: str, rng: np.random.Generator) -> None:
    """``a`` left of / above ``b``: offset along the main axis at least twice the cross offset."""
    for _ in range(500):
        along = rng.uniform(9.0, 20.0)
        across = rng.uniform(-0.4, 0.4) * along
        cx, cy = rng.uniform(10, 22, 2)
        d = (along / 2, across / 2) if relation == "left of" else (across / 2, along / 2)
        a.x, a.y = cx - d[0], cy - d[1]
        b.x, b.y = cx + d[0], cy + d[1]
        if _fits(a, []) and _fits(b, [a]):
            return
    raise RuntimeError("scenes: could not place a pair")  # pragma: no cover


def layout(spec: Spec, rng: np.random.Generator) -> list[Placed]:
    """Random placement of a prompt's objects (non-overlapping; relations respected)."""
    if spec.relation is None:
        objs: list[Placed] = []
        for _ in range(spec.count):
            o = _new(spec.objects[0].colour, spec.objects[0].shape, rng)
            _place_free(o, objs, rng)
            objs.append(o)
        return objs
    a = _new(spec.objects[0].colour, spec.objects[0].shape, rng)
    b = _new(spec.objects[1].colour, spec.objects[1].shape, rng)
    _place_pair(a, b, spec.relation, rng)
    return [a, b]


def background(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.12, 0.24))


def render(prompt: str | Spec, seed: int | np.random.Generator) -> np.ndarray:
    """A real scene for ``prompt``: ``[3, 32, 32]`` float32 in [0, 1], the same for the same seed."""
    spec = parse(prompt) if isinstance(prompt, str) else prompt
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    bg = background(rng)
    return draw(layout(spec, rng), bg, rng)


def render_batch(prompts: Sequence[str], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([render(p, rng) for p in prompts])


def counterfactual(spec: Spec, objects: Sequence[Placed], rng: np.random.Generator) -> tuple[list[Placed], str]:
    """The same scene made wrong for its caption in one way, everything else kept (position, size,
    background): one object's shape or colour changed, one object too many or too few (counting
    prompts), or the pair's places swapped (relation prompts). Shape changes are half of them.
    Returns the new objects and the kind of change. Never a near miss (:func:`malform`): the
    objects stay well drawn, only *what* is drawn is wrong."""
    objs = [replace(o) for o in objects]
    u = rng.random()
    i = int(rng.integers(len(objs)))
    if u < 0.5:
        kind = "shape"
        objs[i].shape = str(rng.choice([s for s in SHAPES if s != objs[i].shape]))
    elif u < 0.7:
        kind = "colour"
        objs[i].colour = str(rng.choice([c for c in COLOURS if c != objs[i].colour]))
        objs[i].rgb = _jitter_rgb(objs[i].colour, rng)
    elif spec.relation is not None:
        kind = "relation"
        a, b = objs
        a.x, a.y, b.x, b.y = b.x, b.y, a.x, a.y
    else:
        kind = "count"
        if spec.count == MAX_COUNT or (spec.count > 1 and rng.random() < 0.5):
            objs.pop(i)
        else:
            extra = _new(objs[0].colour, objs[0].shape, rng)
            _place_free(extra, objs, rng)
            objs.append(extra)
    return objs, kind


def render_counterfactual(prompt: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """A real scene for ``prompt`` and its :func:`counterfactual` on the same background."""
    spec = parse(prompt)
    bg = background(rng)
    objs = layout(spec, rng)
    wrong, kind = counterfactual(spec, objs, rng)
    return draw(objs, bg, rng), draw(wrong, bg, rng), kind


# ----------------------------------------------------------------------------- judge training data


def malform(o: Placed, rng: np.random.Generator) -> None:
    """Turn ``o`` into a near miss (shape BLOB): ragged/star-shaped outline or a smear."""
    kind = rng.choice(["star", "ragged", "smear", "squashed"])
    o.malform = str(kind)
    if kind == "star":  # e.g. a square whose edges cave in: a 4-6 pointed star
        n = int(rng.integers(4, 7))
        inner = rng.uniform(0.35, 0.7)
        o.star = tuple(float(v) for v in np.tile([1.25, inner * 1.25], n))
    elif kind == "ragged":
        n = int(rng.integers(10, 18))
        o.star = tuple(float(v) for v in rng.uniform(0.45, 1.35, n))
    elif kind == "squashed":  # a sliver: much wider than tall, or the other way
        n = 16
        a = np.arange(n) * 2 * np.pi / n
        ratio = rng.uniform(0.25, 0.45)
        o.star = tuple(float(v) for v in 1.2 / np.sqrt(np.cos(a) ** 2 + (np.sin(a) / ratio) ** 2))
    else:  # smear: a soft blurred smudge of the shape's colour
        o.star = tuple(float(v) for v in rng.uniform(0.8, 1.2, 12))
    o.shape = BLOB


@dataclass
class Labelled:
    image: np.ndarray  # [3, RES, RES]
    counts: np.ndarray  # [6, 4] objects per (colour, judge shape), clipped at MAX_COUNT
    centres: np.ndarray  # [6, 4, 2] mean centre (x, y) / RES of that cell's objects (0 where none)
    objects: list = field(default_factory=list)  # (colour index, judge shape index, x, y) per object


def labels_of(objects: Sequence[Placed]) -> tuple[np.ndarray, np.ndarray]:
    colours, shapes = list(COLOURS), list(JUDGE_SHAPES)
    counts = np.zeros((len(colours), len(shapes)), dtype=np.int64)
    centres = np.zeros((len(colours), len(shapes), 2), dtype=np.float32)
    for o in objects:
        i, j = colours.index(o.colour), shapes.index(o.shape)
        counts[i, j] += 1
        centres[i, j] += (o.x / RES, o.y / RES)
    nz = counts > 0
    centres[nz] /= counts[nz][:, None]
    return np.minimum(counts, MAX_COUNT), centres


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """A smooth random field (unit standard deviation) varying over ``scale`` pixels."""
    f = rng.normal(size=shape)
    f = _blur(f, scale)
    return f / (f.std() + 1e-9)


def draw_generated_like(objects: Sequence[Placed], rng: np.random.Generator) -> np.ndarray:
    """The scene drawn the way a small generator draws it (labels unchanged): corners rounded by up to
    half an object's half-size, outlines wobbling, colours off in hue and strength, a tinted, uneven
    background, soft edges, sometimes a faint smudge that is not an object. For training a judge that
    must read generated images (a rounded square is still a square; a smudge is nothing)."""
    s = SUPERSAMPLE
    n = RES * s
    t = (np.arange(n) + 0.5) / s
    py, px = np.meshgrid(t, t, indexing="ij")
    bg = background(rng)
    tint = rng.normal(0, 0.012, 3)
    slope = rng.uniform(-0.03, 0.03, 2)
    grad = slope[0] * (np.arange(RES)[None, :] / RES - 0.5) + slope[1] * (np.arange(RES)[:, None] / RES - 0.5)
    img = np.clip(bg + tint[:, None, None] + grad[None], 0, 1).astype(np.float64)
    wobble = _smooth_field((n, n), rng, 2.5 * s) * rng.uniform(0.0, 0.12)
    for o in objects:
        m = _shape_mask(o, px, py).astype(np.float64)
        rounding = rng.uniform(0.0, 0.35) * o.r * s  # in supersampled pixels
        if rounding > 0.5:
            m = _blur(m, rounding)
        edge = (m > 0.02) & (m < 0.98) if rounding > 0.5 else _blur(m, s) > 0.02  # wobble the outline only
        cover = ((m + wobble * edge) > 0.5).astype(np.float64).reshape(RES, s, RES, s).mean(axis=(1, 3))
        rgb = np.asarray(o.rgb, dtype=np.float64)
        grey = rgb.mean()
        angle = rng.uniform(-0.12, 0.12)  # a hue turn about the grey axis
        k = np.ones(3) / np.sqrt(3)
        v = rgb - grey
        v = v * np.cos(angle) + np.cross(k, v) * np.sin(angle) + k * (k @ v) * (1 - np.cos(angle))
        rgb = np.clip(grey + rng.uniform(-0.05, 0.05) + v * rng.uniform(0.8, 1.1), 0, 1)
        img = img * (1 - cover) + rgb[:, None, None] * cover
    if rng.random() < 0.3:  # a faint smudge: not an object
        c = np.asarray(COLOURS[str(rng.choice(list(COLOURS)))])
        x, y, r = rng.uniform(4, RES - 4), rng.uniform(4, RES - 4), rng.uniform(1.5, 3.0)
        yy, xx = np.mgrid[0:RES, 0:RES] + 0.5
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r * r)) * rng.uniform(0.1, 0.25)
        img = img * (1 - blob) + c[:, None, None] * blob
    img = np.stack([_blur(ch, rng.uniform(0.5, 1.1)) for ch in img])
    img = img + rng.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def judge_example(rng: np.random.Generator, near_miss: float = 0.3, generated_like: float = 0.0) -> Labelled:
    """A labelled training scene for the judge: a prompt's scene, or 0-4 random objects, with near misses.

    Each object becomes a near miss (labelled BLOB, so a malformed square is *not* a square) with
    probability ``near_miss``; a few scenes are mildly blurred or noisy (labels unchanged). With
    probability ``generated_like`` the scene is drawn by :func:`draw_generated_like` instead.
    """
    specs = _SPECS
    if rng.random() < 0.6:
        objs = layout(specs[int(rng.integers(len(specs)))], rng)
    else:
        objs = []
        for _ in range(int(rng.integers(0, 5))):
            o = _new(str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), rng)
            try:
                _place_free(o, objs, rng)
            except RuntimeError:  # pragma: no cover
                break
            objs.append(o)
    for o in objs:
        if rng.random() < near_miss:
            malform(o, rng)
    if generated_like and rng.random() < generated_like:
        img = draw_generated_like(objs, rng)
    else:
        blur = float(rng.uniform(0.3, 0.6)) if rng.random() < 0.15 else 0.0
        img = draw(objs, background(rng), rng, blur=blur)
        if rng.random() < 0.15:
            img = np.clip(img + rng.normal(0, 0.03, img.shape).astype(np.float32), 0, 1)
    counts, centres = labels_of(objs)
    cols, shapes = list(COLOURS), list(JUDGE_SHAPES)
    return Labelled(img, counts, centres, [(cols.index(o.colour), shapes.index(o.shape), o.x, o.y) for o in objs])


_SPECS = all_specs()

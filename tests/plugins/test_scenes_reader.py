"""The rule-based scenes reader (the shipped ``scene-judge``): what it finds, how it grades, and the
agreement benchmark that holds it against people.

Every expectation here comes from the world's own renders or from shapes drawn by hand -- never from
the labelled images, which are a measuring stick (benchmarks/judge_agreement.py).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from rats_plugins.scenes import reader, world
from rats_plugins.scenes.reader import Found, grade_objects

REPO = Path(__file__).resolve().parents[2]


def _scene(objects, blur: float = 0.0, bg: float = 0.18) -> np.ndarray:
    return world.draw(objects, bg, np.random.default_rng(0), blur=blur)


def _obj(colour, shape, x, y, r=4.5, angle=0.0):
    return world.Placed(colour, shape, x, y, r, world.COLOURS[colour], angle)


def _soft_square(x: float, y: float, rgb, corner: float, blur: float, half: float = 4.0, bg: float = 0.18):
    """A square of half-side ``half`` whose corners are rounded by ``corner`` x half, blurred: a generator's square."""
    s = 8
    t = (np.arange(32 * s) + 0.5) / s
    py, px = np.meshgrid(t, t, indexing="ij")
    qx = np.maximum(np.abs(px - x) - half * (1 - corner), 0)
    qy = np.maximum(np.abs(py - y) - half * (1 - corner), 0)
    m = (qx ** 2 + qy ** 2 <= (corner * half) ** 2) & (np.abs(px - x) <= half) & (np.abs(py - y) <= half)
    cover = ndimage.gaussian_filter(m.reshape(32, s, 32, s).mean((1, 3)).astype(np.float64), blur)
    img = np.full((3, 32, 32), bg) * (1 - cover) + np.asarray(rgb)[:, None, None] * cover
    return img.astype(np.float32)


# ----------------------------------------------------------------------------- reading


def test_renders_of_every_heldout_prompt_are_read_right():
    """The second check (the first is people, benchmarks/judge_agreement.py): the world's own renders."""
    prompts = world.split_prompts("heldout")
    grades, _ = reader.grade(world.render_batch(prompts, 20240), prompts)
    for cat in ("all", "count", "colour", "shape", "relation"):
        vals = [g[cat] for g in grades if g[cat] is not None]
        assert np.mean(vals) >= 0.99, (cat, np.mean(vals))


@pytest.mark.parametrize("blur", [0.0, 0.7, 1.0])
def test_shapes_read_through_a_generators_blur(blur):
    img = _scene([_obj("red", "circle", 8, 10), _obj("blue", "square", 22, 10), _obj("green", "triangle", 15, 24)],
                 blur=blur)
    found = {o.colour: o.shape for o in reader.find_objects(img)}
    assert found == {"red": "circle", "blue": "square", "green": "triangle"}


@pytest.mark.parametrize("corner,blur", [(0.0, 0.6), (0.25, 0.8), (0.5, 0.6), (0.5, 1.0)])
def test_a_rounded_square_is_a_square(corner, blur):
    """Rounded corners (a generator's square) up to half the half-side, at a generator's blur."""
    img = _soft_square(15.3, 16.2, world.COLOURS["cyan"], corner, blur)
    (o,) = reader.find_objects(img)
    assert (o.colour, o.shape) == ("cyan", "square"), o


def test_an_oval_is_still_a_circle_and_a_rotated_square_a_square():
    oval = world.Placed("yellow", "circle", 16, 16, 4.5, world.COLOURS["yellow"])
    img = _scene([oval], blur=0.7)
    # stretch the rendered circle 1.25x horizontally: an oval
    img = np.stack([ndimage.zoom(c, (1.0, 1.25), order=1)[:, 4:36] for c in img]).astype(np.float32)
    assert [o.shape for o in reader.find_objects(img)] == ["circle"]
    img = _scene([_obj("purple", "square", 16, 16, angle=0.6)], blur=0.6)
    assert [(o.colour, o.shape) for o in reader.find_objects(img)] == [("purple", "square")]


def test_magenta_reads_as_purple_and_a_faint_smudge_is_not_an_object():
    faint = world.Placed("green", "circle", 24, 16, 3.0, (0.2, 0.28, 0.2))  # barely off the grey background
    img = world.draw([world.Placed("purple", "circle", 10, 16, 4.5, (0.8, 0.15, 0.8)), faint], 0.18, blur=0.5)
    found = reader.find_objects(img)
    assert [(o.colour, o.shape) for o in found] == [("purple", "circle")]


def test_two_merged_objects_are_one_malformed_region_holding_two():
    a, b = _obj("red", "triangle", 13, 16, r=5.0), _obj("red", "triangle", 19, 17, r=5.0)
    (o,) = reader.find_objects(_scene([a, b], blur=0.6))
    assert o.shape == world.BLOB and o.copies == 2


def test_two_touching_objects_of_different_colours_are_two_objects():
    img = _scene([_obj("blue", "circle", 12, 16), _obj("yellow", "square", 20.5, 16)], blur=0.6)
    assert sorted(o.colour for o in reader.find_objects(img)) == ["blue", "yellow"]


def test_read_gives_the_judges_count_table_and_resizes():
    prompts = ["two red circles", "a blue square above a yellow triangle"]
    imgs = torch.from_numpy(world.render_batch(prompts, 3))
    big = torch.nn.functional.interpolate(imgs, scale_factor=2, mode="bilinear")
    counts, centres = reader.read(imgs)
    assert counts.shape == (2, 6, 4) and centres.shape == (2, 6, 4, 2)
    assert (counts[0] == world.parse(prompts[0]).table()).all() and (counts[1] == world.parse(prompts[1]).table()).all()
    assert (reader.read(big)[0] == counts).all()


# ----------------------------------------------------------------------------- grading by the annotators' rules


def _f(colour, shape, x, y, copies=1):
    return Found(colour, shape, x, y, 40.0, {}, copies)


@pytest.mark.parametrize("objects,expected", [
    # everything right
    ([_f("red", "circle", 8, 16), _f("blue", "square", 24, 16)],
     dict(count=True, colour=True, shape=True, relation=True, all=True)),
    # the second object missing: a count mistake and no relation -- its colour and shape are not judged
    ([_f("red", "circle", 8, 16)], dict(count=False, colour=True, shape=True, relation=False, all=False)),
    # an extra object: count only
    ([_f("red", "circle", 8, 16), _f("blue", "square", 24, 16), _f("green", "triangle", 16, 28)],
     dict(count=False, colour=True, shape=True, relation=True, all=False)),
    # the square drawn green: colour
    ([_f("red", "circle", 8, 16), _f("green", "square", 24, 16)],
     dict(count=True, colour=False, shape=True, relation=True, all=False)),
    # the square drawn as a triangle, or malformed: shape
    ([_f("red", "circle", 8, 16), _f("blue", "triangle", 24, 16)],
     dict(count=True, colour=True, shape=False, relation=True, all=False)),
    ([_f("red", "circle", 8, 16), _f("blue", "blob", 24, 16)],
     dict(count=True, colour=True, shape=False, relation=True, all=False)),
    # places swapped, or on a diagonal where "above" dominates: relation
    ([_f("red", "circle", 24, 16), _f("blue", "square", 8, 16)],
     dict(count=True, colour=True, shape=True, relation=False, all=False)),
    ([_f("red", "circle", 14, 8), _f("blue", "square", 18, 24)],
     dict(count=True, colour=True, shape=True, relation=False, all=False)),
])
def test_grade_follows_the_annotators_rules(objects, expected):
    assert grade_objects(world.parse("a red circle left of a blue square"), objects) == expected


def test_grade_counts_merged_copies_and_counting_prompts():
    spec = world.parse("two green triangles")
    assert grade_objects(spec, [_f("green", "triangle", 8, 8), _f("green", "triangle", 20, 20)])["all"]
    merged = grade_objects(spec, [_f("green", "blob", 12, 12, copies=2)])
    assert merged == dict(count=True, colour=True, shape=False, relation=None, all=False)
    three = grade_objects(spec, [_f("green", "triangle", 8, 8), _f("green", "triangle", 20, 20), _f("green", "triangle", 8, 24)])
    assert (three["count"], three["shape"], three["all"]) == (False, True, False)


def test_scene_judge_metric_uses_the_reader_and_keeps_the_learnt_one_on_request(tmp_path):
    from rats_core.errors import ConfigError
    from rats_plugins.scenes.judge import JudgeNet, save_judge
    from rats_plugins.scenes.metrics import SceneJudge

    prompts = world.split_prompts("heldout")[:8]
    imgs = torch.from_numpy(world.render_batch(prompts, 5))
    judge = SceneJudge()
    grades = judge.grades(imgs, prompts)
    assert all(g["all"] for g in grades) and set(grades[0]) == {"count", "colour", "shape", "relation", "all"}
    out = judge(imgs, prompts)
    assert out["judge_accuracy"] == 1.0 and out["judge_malformed_rate"] == 0.0
    save_judge(JudgeNet(), tmp_path / "j")
    assert SceneJudge(reader="cnn", path=str(tmp_path / "j"))(imgs, prompts)["judge_accuracy"] == 0.0  # sees nothing
    with pytest.raises(ConfigError, match="reader: cnn"):
        SceneJudge(path=str(tmp_path / "j"))
    with pytest.raises(ConfigError, match="reader must be one of"):
        SceneJudge(reader="eyes")


# ----------------------------------------------------------------------------- the agreement benchmark


def _labels(folder: Path, name: str, rows: list[dict]) -> Path:
    path = folder / f"{name}.csv"
    cols = ["file", "prompt", "model", "steps", "all_right", "count_right", "colour_right", "shape_right",
            "relation_right", "notes"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    return path


def test_judge_agreement_benchmark_on_a_small_fixture(tmp_path):
    """Four renders (read right) and one scene drawn wrong; two annotators who disagree on one image.
    Every number of the JSON is checked against a hand count."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    prompts = ["two red circles", "a blue square above a yellow triangle", "a green triangle",
               "a cyan circle left of a purple square"]
    imgs = list(world.render_batch(prompts, 7))
    wrong_prompt = "a red square left of a blue circle"  # drawn with the places swapped
    imgs.append(_scene([_obj("blue", "circle", 8, 16), _obj("red", "square", 24, 16)]))
    prompts.append(wrong_prompt)
    rows_a, rows_b = [], []
    for i, (img, p) in enumerate(zip(imgs, prompts)):
        Image.fromarray((np.moveaxis(img, 0, -1) * 255).round().astype(np.uint8)).save(tmp_path / "images" / f"{i}.png")
        rel = "" if world.parse(p).relation is None else 1
        ok = dict(file=f"images/{i}.png", prompt=p, model="teacher" if i < 3 else "student", steps=2,
                  all_right=1, count_right=1, colour_right=1, shape_right=1, relation_right=rel)
        rows_a.append(dict(ok))
        rows_b.append(dict(ok))
    rows_a[4].update(all_right=0, relation_right=0)
    rows_b[4].update(all_right=0, relation_right=0)
    rows_b[0].update(all_right=0, count_right=0)  # annotator b disagrees on image 0 (the judge reads it right)
    a, b = _labels(tmp_path, "a", rows_a), _labels(tmp_path, "b", rows_b)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "judge_agreement.py"), "--labels", str(a),
                           "--labels", str(b), "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["images"] == 5 and out["n"] == 4  # image 0 has no consensus on "all"
    assert out["n_by_category"] == {"all": 4, "count": 4, "colour": 5, "shape": 5, "relation": 3}
    assert out["agreement"] == {c: 1.0 for c in ("all", "count", "colour", "shape", "relation")}
    assert out["kappa"]["all"] == 1.0 and out["kappa"]["relation"] == 1.0
    # against annotator b alone: 4 of 5 on all; kappa by hand: po 0.8, pe = 0.8*0.6 + 0.2*0.4 = 0.56
    assert out["per_annotator"]["b"]["agreement"]["all"] == 0.8
    assert out["per_annotator"]["b"]["kappa"]["all"] == pytest.approx((0.8 - 0.56) / (1 - 0.56), abs=1e-4)
    assert out["annotators"]["a vs b"]["agreement"]["all"] == 0.8
    assert out["accuracy"] == {"judge": {"student": 0.5, "teacher": 1.0}, "a": {"student": 0.5, "teacher": 1.0},
                               "b": {"student": 0.5, "teacher": round(2 / 3, 4)}}


def test_kappa_closed_form():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from judge_agreement import kappa

    a = np.array([1, 1, 1, 0, 0, 1, 0, 1], bool)
    b = np.array([1, 1, 0, 0, 1, 1, 0, 1], bool)
    po, pa, pb = 6 / 8, 5 / 8, 5 / 8
    pe = pa * pb + (1 - pa) * (1 - pb)
    assert kappa(a, b) == pytest.approx((po - pe) / (1 - pe))
    assert kappa(a, a) == 1.0 and kappa(np.ones(4, bool), np.ones(4, bool)) == 1.0


# ----------------------------------------------------------------------------- scene-fid on the reader's statistics


def test_scene_fid_statistics_separate_generator_like_images_from_renders():
    """Two render sets are close; the same scenes blurred like a generator's are far, and farther the
    more they are blurred -- on the default features (the reader's statistics)."""
    from rats_plugins.scenes.metrics import SceneFID

    prompts = world.split_prompts("heldout")[:60]
    fid = SceneFID()
    renders = torch.from_numpy(world.render_batch(prompts, 1))
    rng = np.random.default_rng(1)

    def blurred(sigma):
        return torch.from_numpy(np.stack([world.draw(world.layout(world.parse(p), rng), world.background(rng), rng,
                                                     blur=sigma) for p in prompts]))

    same = fid(renders, prompts)["fid"]
    soft, softer = fid(blurred(0.6), prompts)["fid"], fid(blurred(1.0), prompts)["fid"]
    assert same < 0.5 < soft < softer, (same, soft, softer)


def test_scene_fid_options_are_checked(tmp_path):
    from rats_core.errors import ConfigError
    from rats_plugins.scenes.judge import JudgeNet, save_judge
    from rats_plugins.scenes.metrics import SceneFID

    save_judge(JudgeNet(), tmp_path / "j")
    prompts = world.split_prompts("heldout")[:4]
    imgs = torch.from_numpy(world.render_batch(prompts, 2))
    assert SceneFID(str(tmp_path / "j"), features="cnn")(imgs, prompts)["fid"] >= 0
    with pytest.raises(ConfigError, match="features: cnn"):
        SceneFID(str(tmp_path / "j"))
    with pytest.raises(ConfigError, match="features must be one of"):
        SceneFID(features="pixels")


def test_the_reader_reads_scenes_drawn_the_way_a_generator_draws_them():
    """world.draw_generated_like: rounded corners, wobbly outlines, off colours, uneven background, soft
    edges and faint smudges -- the reader still reads nine in ten of them fully right (a design check on
    the world's own scenes, not on labelled images)."""
    rng = np.random.default_rng(3)
    prompts = world.split_prompts("heldout")[:80]
    imgs = np.stack([world.draw_generated_like(world.layout(world.parse(p), rng), rng) for p in prompts])
    assert imgs.shape == (80, 3, 32, 32) and 0 <= imgs.min() and imgs.max() <= 1
    grades, _ = reader.grade(imgs, prompts)
    assert np.mean([g["all"] for g in grades]) >= 0.85
    assert np.mean([g["count"] for g in grades]) >= 0.95  # a faint smudge is not counted


def test_judge_examples_can_be_drawn_generator_like():
    rng = np.random.default_rng(0)
    ex = [world.judge_example(rng, generated_like=1.0) for _ in range(20)]
    assert all(e.image.shape == (3, 32, 32) for e in ex)
    # labels are those of the objects, whatever the drawing (no cell here holds more than MAX_COUNT)
    assert all(e.counts.sum() == len(e.objects) for e in ex if e.counts.max() < world.MAX_COUNT)
    plain = world.judge_example(np.random.default_rng(0), generated_like=0.0)
    assert not np.allclose(plain.image, ex[0].image)

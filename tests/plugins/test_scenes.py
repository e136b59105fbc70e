"""The scenes world: prompts, the held-out split, rendering, the judge's grading and its metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rats_plugins.scenes import world
from rats_plugins.scenes.judge import grade_one, summarise
from rats_plugins.scenes.metrics import frechet_distance


# ----------------------------------------------------------------------------- prompts and the split


def test_prompt_round_trip_for_every_combination():
    specs = world.all_specs()
    assert len(specs) == 3 * 18 + 2 * 18 * 17
    for s in specs:
        assert world.parse(world.prompt_of(s)) == s


@pytest.mark.parametrize("prompt,count,relation", [
    ("a red circle", 1, None), ("two blue squares", 2, None), ("Three Cyan Triangles.", 3, None),
    ("a red circle left of a green square", 1, "left of"), ("a blue triangle above a purple circle", 1, "above"),
])
def test_parse(prompt, count, relation):
    s = world.parse(prompt)
    assert (s.count, s.relation) == (count, relation)


@pytest.mark.parametrize("prompt,fragment", [
    ("a photo of a cat", "cannot read"), ("two pink circles", "unknown colour 'pink'"),
    ("a red hexagon", "unknown shape"), ("a red circle left of a red circle", "must differ"),
    ("two red circles above a blue square", "one object on each side"),
])
def test_parse_rejects_with_a_clear_message(prompt, fragment):
    with pytest.raises(ValueError, match=fragment):
        world.parse(prompt)


def test_heldout_split_is_fixed_disjoint_and_covers_every_attribute():
    train, held = world.split_prompts("train"), world.split_prompts("heldout")
    assert not set(train) & set(held)
    assert len(train) + len(held) == len(world.all_specs())
    assert 0.1 < len(held) / (len(train) + len(held)) < 0.3
    # every single attribute, and every (colour, shape) object, is seen in training
    seen = {o for p in train for o in world.parse(p).objects}
    assert seen == {world.Obj(c, s) for c in world.COLOURS for s in world.SHAPES}
    assert {world.parse(p).relation for p in train} == {None, *world.RELATIONS}
    # both prompt kinds are held out
    assert {world.parse(p).kind for p in held} == {"count", "relation"}
    with pytest.raises(ValueError):
        world.split_prompts("test")


def test_shipped_prompt_files_are_the_split():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "experiments" / "prompts"
    assert (root / "scenes_train.txt").read_text().split("\n")[:-1] == world.split_prompts("train")
    assert (root / "scenes_heldout.txt").read_text().split("\n")[:-1] == world.split_prompts("heldout")
    # the validation prompts (for choosing hyperparameters) are train combinations, never held-out ones
    val = (root / "scenes_val.txt").read_text().split("\n")[:-1]
    assert len(val) == len(set(val)) == 121 and set(val) <= set(world.split_prompts("train"))


# ----------------------------------------------------------------------------- rendering


def test_render_is_deterministic_per_seed_and_varies_across_seeds():
    a = world.render("two red circles", 3)
    assert a.shape == (3, 32, 32) and a.dtype == np.float32
    assert 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, world.render("two red circles", 3))
    assert not np.array_equal(a, world.render("two red circles", 4))


def _object_pixels(img: np.ndarray, colour: str) -> np.ndarray:
    target = np.asarray(world.COLOURS[colour])[:, None, None]
    return (np.abs(img - target).max(axis=0) < 0.12)


def test_render_draws_the_prompt():
    rng = np.random.default_rng(0)
    for _ in range(20):
        img = world.render("a red circle left of a blue square", rng)
        red, blue = _object_pixels(img, "red"), _object_pixels(img, "blue")
        assert red.sum() > 20 and blue.sum() > 20
        rx, ry = np.argwhere(red)[:, 1].mean(), np.argwhere(red)[:, 0].mean()
        bx, by = np.argwhere(blue)[:, 1].mean(), np.argwhere(blue)[:, 0].mean()
        assert bx - rx > abs(by - ry)  # blue lies to the right, along the dominant axis
        img = world.render("a green triangle above a yellow circle", rng)
        g, y = np.argwhere(_object_pixels(img, "green")), np.argwhere(_object_pixels(img, "yellow"))
        assert y[:, 0].mean() - g[:, 0].mean() > abs(y[:, 1].mean() - g[:, 1].mean())


def test_counting_scenes_have_separate_objects():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    for n, word in ((1, "a"), (2, "two"), (3, "three")):
        for _ in range(10):
            img = world.render(f"{word} cyan {'square' if n == 1 else 'squares'}", rng)
            _, found = ndimage.label(_object_pixels(img, "cyan"))
            assert found == n


def test_counterfactual_is_wrong_for_its_caption_in_the_named_way_only():
    """The reward CLIP's image-space negatives: the same scene made wrong in one attribute."""
    rng = np.random.default_rng(3)
    specs = world.all_specs()
    seen = set()
    for t in range(300):
        spec = specs[int(rng.integers(len(specs)))]
        objs = world.layout(spec, rng)
        wrong, kind = world.counterfactual(spec, objs, rng)
        seen.add(kind)
        assert grade_one(spec, *world.labels_of(objs))["all"]
        g = grade_one(spec, *world.labels_of(wrong))
        assert not g["all"], (world.prompt_of(spec), kind)
        if kind in ("count", "relation"):
            assert g[kind] is False
        assert all(o.shape in world.SHAPES for o in wrong)  # never a near miss
        assert objs != wrong and len(objs) == (2 if spec.relation else spec.count)  # original kept
    assert seen == {"shape", "colour", "count", "relation"}
    right, bad, kind = world.render_counterfactual("a red circle left of a blue square", np.random.default_rng(0))
    assert right.shape == bad.shape == (3, 32, 32) and np.abs(right - bad).max() > 0.3


def test_near_miss_labels():
    rng = np.random.default_rng(2)
    blobs = 0
    for _ in range(200):
        ex = world.judge_example(rng)
        assert ex.counts.shape == (6, 4) and ex.centres.shape == (6, 4, 2)
        assert ex.image.shape == (3, 32, 32)
        blobs += ex.counts[:, world.JUDGE_SHAPES.index(world.BLOB)].sum()
    assert blobs > 20  # near misses are a real part of the judge's training data


# ----------------------------------------------------------------------------- grading


def _reading(spec: world.Spec, centres: dict | None = None):
    counts = spec.table()
    c = np.zeros((6, 4, 2), dtype=np.float32)
    for (i, j), xy in (centres or {}).items():
        c[i, j] = xy
    return counts, c


def test_grade_counting_prompt():
    spec = world.parse("two red squares")
    counts, centres = _reading(spec)
    assert grade_one(spec, counts, centres) == {"count": True, "colour": True, "shape": True,
                                                "relation": None, "all": True}
    wrong = counts.copy()
    wrong[0, 1] = 3  # three red squares
    g = grade_one(spec, wrong, centres)
    assert not g["count"] and not g["all"] and not g["colour"]
    blob = counts.copy()
    blob[0, 1], blob[0, 3] = 1, 1  # one of the squares is malformed
    g = grade_one(spec, blob, centres)
    assert g["count"] and g["colour"] and not g["shape"] and not g["all"]


def test_grade_relation_prompt():
    spec = world.parse("a red circle left of a blue square")
    ok = {(0, 0): (0.2, 0.5), (2, 1): (0.8, 0.55)}
    counts, centres = _reading(spec, ok)
    assert grade_one(spec, counts, centres)["all"]
    counts, centres = _reading(spec, {(0, 0): (0.8, 0.5), (2, 1): (0.2, 0.5)})  # swapped
    g = grade_one(spec, counts, centres)
    assert g["count"] and g["colour"] and g["shape"] and g["relation"] is False and not g["all"]
    counts, centres = _reading(spec, {(0, 0): (0.5, 0.2), (2, 1): (0.55, 0.8)})  # above, not left of
    assert grade_one(spec, counts, centres)["relation"] is False
    counts, centres = _reading(spec, ok)
    counts[2, 1], counts[2, 0] = 0, 1  # a blue circle instead of a blue square
    g = grade_one(spec, counts, centres)
    assert g["colour"] and not g["shape"] and g["relation"] is False


def test_summarise_counts_relation_over_relation_prompts_only():
    gs = [{"count": True, "colour": True, "shape": False, "relation": None, "all": False},
          {"count": True, "colour": False, "shape": True, "relation": True, "all": False}]
    assert summarise(gs) == {"count": 1.0, "colour": 0.5, "shape": 0.5, "relation": 1.0, "all": 0.0}


def test_frechet_distance_is_zero_for_equal_gaussians_and_grows_with_the_mean_shift():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 8))
    mu, cov = f.mean(0), np.cov(f, rowvar=False)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-6
    assert frechet_distance(mu + 1, cov, mu, cov) == pytest.approx(8.0, rel=1e-6)


# ----------------------------------------------------------------------------- the reward's folder format


def _tiny_clip_folder(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from rats_plugins.scenes.pipeline import make_tokenizer, text_config

    torch.manual_seed(0)
    tok = make_tokenizer(tmp_path)
    tcfg = text_config(tok, 32)
    tcfg.pop("projection_dim")
    vcfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=tcfg, vision_config=vcfg, projection_dim=16)).save_pretrained(str(tmp_path))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(tmp_path))
    return tmp_path


def test_tokenizer_spells_every_word_as_one_token(tmp_path):
    from rats_plugins.scenes.pipeline import WORDS, make_tokenizer

    tok = make_tokenizer(tmp_path)
    for w in WORDS:
        assert len(tok(w).input_ids) == 3, w  # <start> word <end>
    ids = tok("a red circle left of a blue square").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id == max(tok.get_vocab().values())


def test_stock_pickscore_loads_the_scenes_clip_folder_and_keeps_its_gradient_after_inference_mode(tmp_path):
    """The teacher scores its images under torch.inference_mode, then the student's reward needs a
    gradient with the same prompts: the cached text features must not be inference tensors."""
    from rats_plugins.rewards.plugin import pickscore

    reward = pickscore(str(_tiny_clip_folder(tmp_path)))
    prompts = ["two red circles", "a blue square left of a yellow triangle"]
    with torch.inference_mode():
        teacher = reward(torch.rand(2, 3, 32, 32), prompts)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    student = reward(x, prompts)
    student.sum().backward()
    assert teacher.shape == student.shape == (2,) and x.grad.abs().sum() > 0


def test_density_target_round_trips_to_the_labels():
    from rats_plugins.scenes.judge import JudgeNet, counts_and_centres, density_target

    rng = np.random.default_rng(3)
    for _ in range(50):
        ex = world.judge_example(rng)
        counts, centres = counts_and_centres(density_target(ex.objects)[None])
        np.testing.assert_array_equal(counts[0].numpy(), ex.counts)
        cells = ex.counts > 0
        if not cells.any():
            continue
        # the density's centre of mass is the objects' mean centre, up to the grid's border truncation
        assert np.abs(centres[0].numpy()[cells] - ex.centres[cells]).max() < 0.08
    net = JudgeNet()
    x = torch.rand(2, 3, 32, 32)
    assert net(x).shape == (2, 6, 4, 8, 8) and net.features(x).shape == (2, 64)
    assert counts_and_centres(net(x))[0].sum() == 0  # an untrained judge sees nothing, not everything


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "plugins" / "scenes" / "weights" / "judge").is_dir(),
                    reason="judge weights not built")
def test_scene_judge_reports_how_often_it_sees_malformed_objects():
    """judge_malformed_rate of the learnt judge (reader: cnn): ~0 on clean renders, high when every
    object is a near miss."""
    from rats_plugins.scenes.metrics import SceneJudge

    judge = SceneJudge(reader="cnn")
    prompts = world.split_prompts("heldout")[:60]
    clean = torch.from_numpy(world.render_batch(prompts, 11))
    rng = np.random.default_rng(11)
    broken = []
    for p in prompts:
        objs = world.layout(world.parse(p), rng)
        for o in objs:
            world.malform(o, rng)
        broken.append(world.draw(objs, world.background(rng), rng))
    clean_rate = judge(clean, prompts)["judge_malformed_rate"]
    broken_out = judge(torch.from_numpy(np.stack(broken)), prompts)
    assert clean_rate <= 0.05 and broken_out["judge_malformed_rate"] >= 0.8, (clean_rate, broken_out)
    assert broken_out["judge_shape"] <= 0.2


def test_reward_clip_training_runs_and_writes_a_folder_the_stock_reward_loads(tmp_path):
    """The pretraining's reward stage end to end, a few steps: the loss with every kind of negative
    (captions, degraded copies, counterfactual scenes) back-propagates and the report says what it checked."""
    from rats_plugins.rewards.plugin import pickscore
    from rats_plugins.scenes.pipeline import train_clip

    info = train_clip(tmp_path, seed=0, steps=2, batch=8, counterfactuals=True)
    assert info["counterfactual_images"] and info["degraded_negatives"]
    assert set(info["heldout_right_scene_beats_counterfactual"]) == {"shape", "colour", "count", "relation"}
    reward = pickscore(path=str(tmp_path / "clip"))
    scores = reward(torch.rand(2, 3, 32, 32), ["two red circles", "a blue square above a red circle"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


SHIPPED_PIPELINE = Path(__file__).resolve().parents[2] / "plugins" / "scenes" / "weights" / "pipeline"


def test_soften_redraws_a_scene_with_the_generator_and_pairs_share_their_noise():
    """SDEdit through diffusers' img2img: low strength keeps the scene (closer to its source than to
    another scene), one seed gives one noise (two copies of an image come back identical), and a
    right/counterfactual pair comes back softened alike, still different where the source differed."""
    from rats_plugins.scenes.pipeline import img2img, soft_pairs, soften

    pipe = img2img(SHIPPED_PIPELINE)
    rng = np.random.default_rng(0)
    a = torch.from_numpy(world.render("two red circles", rng))
    b = torch.from_numpy(world.render("a blue square above a yellow triangle", rng))
    out = soften(torch.stack([a, a, b]), pipe, [5, 5, 6], strength=0.2)
    assert out.shape == (3, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out[0], out[1])
    assert ((out[0] - a) ** 2).mean() < ((out[0] - b) ** 2).mean() / 4
    assert not torch.equal(out[0], a)  # redrawn, not passed through
    right, wrong, caps = soft_pairs(4, SHIPPED_PIPELINE, np.random.default_rng(1), chunk=2)
    assert right.shape == wrong.shape == (4, 3, 32, 32) and len(caps) == 4
    assert all(world.parse(c) for c in caps)
    assert all(not torch.equal(r, w) for r, w in zip(right, wrong))


def test_reward_clip_trains_on_generated_pairs_when_asked(tmp_path):
    from rats_plugins.scenes.pipeline import train_clip

    info = train_clip(tmp_path, seed=0, steps=2, batch=8, generated=4, pipeline=SHIPPED_PIPELINE)
    assert info["generated_pairs"] == 4 and (tmp_path / "clip" / "model.safetensors").exists()


def test_pretraining_the_reward_without_a_base_pipeline_says_how_to_fix_it(tmp_path):
    from rats_plugins.scenes.pretrain import main

    with pytest.raises(SystemExit) as e:
        main(["--what", "clip", "--out", str(tmp_path), "--clip-steps", "1"])
    msg = str(e.value)
    assert "--generated 4096" in msg and str(tmp_path / "pipeline") in msg and "--generated 0" in msg
    assert not (tmp_path / "clip" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- the diagnostic reward


def _attribute_reward(tmp_path, densities=None):
    """scene-attributes on a randomly initialised second judge saved in tmp_path; with ``densities``,
    its network is replaced by one that reads exactly those density maps (the formula under test)."""
    from rats_plugins.scenes.plugin import scene_attributes
    from rats_plugins.scenes.judge import JudgeNet, save_judge

    torch.manual_seed(5)
    save_judge(JudgeNet(), tmp_path / "judge2")
    reward = scene_attributes(path=str(tmp_path / "judge2"))
    if densities is not None:
        class Reads(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.anchor = torch.nn.Parameter(torch.zeros(()))

            def forward(self, x):
                return torch.stack(densities) + 0 * x.sum()

        reward.model = Reads()
    return reward


def test_attribute_reward_keeps_the_reward_contract(tmp_path):
    from tests.core.test_contracts import check_reward

    check_reward(_attribute_reward(tmp_path))


def test_attribute_reward_is_zero_for_a_right_reading_and_lower_for_each_kind_of_mistake(tmp_path):
    from rats_plugins.scenes.judge import density_target

    c, s = list(world.COLOURS), list(world.JUDGE_SHAPES)
    red_circle, blue_square = (c.index("red"), s.index("circle")), (c.index("blue"), s.index("square"))
    blob = s.index(world.JUDGE_SHAPES[-1])
    two_red = density_target([(*red_circle, 8, 16), (*red_circle, 24, 16)])
    one_red = density_target([(*red_circle, 8, 16)])
    red_and_blob = density_target([(*red_circle, 8, 16), (red_circle[0], blob, 24, 16)])
    left = density_target([(*red_circle, 8, 16), (*blue_square, 24, 16)])      # red left of blue: right
    swapped = density_target([(*red_circle, 24, 16), (*blue_square, 8, 16)])   # the two swapped
    reads = [two_red, one_red, red_and_blob, left, swapped]
    prompts = ["two red circles"] * 3 + ["a red circle left of a blue square"] * 2
    scores = _attribute_reward(tmp_path, reads)(torch.rand(5, 3, 32, 32), prompts)
    right, missing, malformed, rel_right, rel_swapped = scores.tolist()
    assert abs(right) < 1e-4                                     # the right table, nothing else
    assert missing == pytest.approx(-1.0, abs=1e-3)              # one circle short
    assert malformed == pytest.approx(-2.0, abs=1e-3)            # a circle missing and a blob too many
    assert rel_right == pytest.approx(5.0 * 0.15, abs=1e-3)      # counts right, margin capped
    assert rel_swapped < -2.0                                    # counts right, on the wrong side


def test_attribute_reward_refuses_the_evaluation_judge(tmp_path):
    import shutil

    from rats_core.errors import ConfigError
    from rats_plugins.scenes.plugin import scene_attributes
    from rats_plugins.scenes.metrics import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "judge" / "model.safetensors").is_file():
        pytest.skip("judge weights not built")
    with pytest.raises(ConfigError, match="evaluation judge.*--what judge --seed 1"):
        scene_attributes(path=str(WEIGHTS_DIR / "judge"))
    shutil.copytree(WEIGHTS_DIR / "judge", tmp_path / "copy")     # a copy is the same judge
    with pytest.raises(ConfigError, match="evaluation judge"):
        scene_attributes(path=str(tmp_path / "copy"))


# ----------------------------------------------------------------------------- the preference-tuned CLIP


def test_preference_pairs_prefer_fewer_mistakes_within_a_prompt_only():
    from rats_plugins.scenes.preferences import preference_pairs

    errors = np.array([0, 2, 2, 1,   3, 0, 0, 0])
    assert sorted(preference_pairs(errors, 4)) == [(0, 1), (0, 2), (0, 3), (3, 1), (3, 2), (5, 4), (6, 4), (7, 4)]


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "plugins" / "scenes" / "weights" / "judge").is_dir(),
                    reason="judge weights not built")
def test_mistakes_are_zero_for_right_renders_and_count_each_wrong_attribute():
    from rats_plugins.scenes.metrics import load_frozen_judge
    from rats_plugins.scenes.preferences import mistakes

    judge = load_frozen_judge(None, "test")
    prompts = world.split_prompts("train")[:40]
    rng = np.random.default_rng(2)
    pairs = [world.render_counterfactual(p, rng) for p in prompts]
    right = mistakes(judge, torch.from_numpy(np.stack([p[0] for p in pairs])), prompts)
    wrong = mistakes(judge, torch.from_numpy(np.stack([p[1] for p in pairs])), prompts)
    assert (right == 0).mean() >= 0.95 and (wrong >= 1).mean() >= 0.9, (right, wrong)


def test_preference_finetune_writes_a_clip_the_stock_reward_loads_and_refuses_the_evaluation_judge(tmp_path, monkeypatch):
    from rats_core.errors import ConfigError
    from rats_plugins.rewards.plugin import pickscore
    from rats_plugins.scenes import preferences
    from rats_plugins.scenes.judge import JudgeNet, save_judge
    from rats_plugins.scenes.metrics import WEIGHTS_DIR
    from rats_plugins.scenes.pipeline import train_clip

    if not (SHIPPED_PIPELINE / "model_index.json").is_file():
        pytest.skip("scenes pipeline not built")
    train_clip(tmp_path / "base", seed=0, steps=1, batch=8)
    torch.manual_seed(0)
    save_judge(JudgeNet(), tmp_path / "second")
    # an untrained annotator reads nothing (no pairs); stand in a reading that prefers every other image
    monkeypatch.setattr(preferences, "mistakes", lambda judge, images, prompts: np.arange(len(prompts)) % 2)
    prompts = world.split_prompts("train")[:3]
    info = preferences.finetune_clip_on_preferences(
        tmp_path / "out", 0, tmp_path / "second", SHIPPED_PIPELINE, tmp_path / "base" / "clip",
        steps=2, batch=4, per_prompt=2, prompts=prompts)
    assert info["generated_images"] == 6 and info["pairs"] == 3
    reward = pickscore(path=str(tmp_path / "out" / "clip"))
    assert torch.isfinite(reward(torch.rand(2, 3, 32, 32), prompts[:2])).all()
    with pytest.raises(ConfigError, match="evaluation judge"):
        preferences.finetune_clip_on_preferences(tmp_path / "x", 0, WEIGHTS_DIR / "judge", SHIPPED_PIPELINE,
                                                 tmp_path / "base" / "clip", steps=1, prompts=prompts)
    with pytest.raises(ValueError, match="only train prompts"):
        preferences.finetune_clip_on_preferences(tmp_path / "x", 0, tmp_path / "second", SHIPPED_PIPELINE,
                                                 tmp_path / "base" / "clip", steps=1,
                                                 prompts=world.split_prompts("heldout")[:1])


def test_pretraining_preferences_without_an_annotator_says_how_to_make_one(tmp_path):
    from rats_plugins.scenes.pretrain import main

    with pytest.raises(SystemExit, match="--annotator DIR/judge.*--what judge --seed 1"):
        main(["--what", "preferences", "--out", str(tmp_path)])

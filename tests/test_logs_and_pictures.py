"""Logs a person reads in a file, pictures a person can inspect, file modes, quiet library warnings."""

from __future__ import annotations

import os
import io
import json
import stat
import warnings

import pytest
import torch

from rats_core.training import progress
from rats_core.evaluation.pictures import metric_axis_label, metric_direction, reward_vs_nfe, save_image
from rats_core.evaluation.report import write_eval_report


def test_plain_progress_lines_when_not_a_terminal(monkeypatch):
    out = io.StringIO()
    clock = iter([0.0, 10.0, 31.0, 50.0, 62.0, 62.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = progress.progress_bar(total=4, desc="rats", unit="step", file=out)
    assert isinstance(bar, progress.PlainProgress)
    for i in range(4):
        bar.set_postfix(loss=f"{0.5 - i / 10:.2f}")  # as the progress callback does: numbers, then update
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # one line at the first step, one once 30 s have passed since (at the 3rd), one at the end
    assert lines == [
        "rats: step 1/4 (25%), 10 s/step, 30s left; loss=0.50",
        "rats: step 3/4 (75%), 16.7 s/step, 17s left; loss=0.30",
        "rats: step 4/4 (100%), 15.5 s/step, 1m02s in all; loss=0.20",
    ]


def test_the_progress_line_shows_the_steps_own_numbers(monkeypatch):
    """The line printed at step N carries step N's loss (the one metrics.jsonl has for N), not N-1's."""
    from types import SimpleNamespace

    from rats_plugins.callbacks import Progress

    out = io.StringIO()
    cb = Progress()
    cb.bar = progress.PlainProgress(total=3, desc="rats", unit="step", file=out, interval=0)
    for step, loss in ((1, 0.3), (2, 0.2), (3, 0.1)):
        cb.step_end(SimpleNamespace(step=step), {"loss": loss, "reward_student": 0.0, "reward_teacher": 0.0,
                                                 "gate_mean": 0.5})
    lines = out.getvalue().splitlines()
    assert [line.split(": step ")[1].split("/")[0] for line in lines] == ["1", "2", "3"]
    assert [line.split("loss=")[1].split()[0] for line in lines] == ["0.3", "0.2", "0.1"]


def test_plain_progress_resumed_counts_from_the_initial_step(monkeypatch):
    out = io.StringIO()
    bar = progress.PlainProgress(total=10, initial=6, desc="rats", unit="step", file=out, interval=0)
    bar.update(1)
    bar.close()
    assert out.getvalue().startswith("rats: step 7/10 (70%)")


def test_a_terminal_gets_tqdm():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm import tqdm

    bar = progress.progress_bar(total=3, file=Tty())
    assert isinstance(bar, tqdm)
    bar.close()


def test_library_future_warnings_are_silenced_but_not_others(monkeypatch):
    monkeypatch.setattr(progress.sys, "warnoptions", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        progress.quiet_library_warnings()
        warnings.warn_explicit("`all_gather_into_tensor` is deprecated", FutureWarning, "c10d_logger.py", 83,
                               module="torch.distributed.c10d_logger")
        warnings.warn_explicit("mine", FutureWarning, "x.py", 1, module="my_script")
    assert [str(w.message) for w in caught] == ["mine"]


def test_sample_scale_is_nearest_neighbour(tmp_path):
    from PIL import Image

    img = torch.zeros(3, 2, 2)
    img[:, 0, 1] = 1.0
    save_image(img, tmp_path / "a.png", scale=4)
    arr = torch.tensor(list(Image.open(tmp_path / "a.png").getdata())).reshape(8, 8, 3)
    assert arr[:4, 4:].eq(255).all() and arr[:4, :4].eq(0).all() and arr[4:].eq(0).all()
    save_image(img, tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").size == (2, 2)


def test_metric_panels_say_which_way_is_better():
    assert metric_direction("fid") == "lower" and metric_axis_label("fid") == "value (lower is better)"
    assert metric_direction("judge_accuracy") == "higher"
    assert metric_axis_label("my_thing") == "value"


def _results(acc):
    cell = lambda s, a: {"steps": s, "rewards": {"reward": {"mean": a, "ci95": 0.01}}, "metrics": {"judge_accuracy": a,
                                                                                                      "fid": 40 - a}}
    return {"base": {2: cell(2, acc[0]), 50: cell(50, acc[1])}, "student": {2: cell(2, acc[2])}}


def test_a_nearly_constant_metric_does_not_fill_the_panel(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    saved = {}
    real = plt.Figure.savefig

    def keep(fig, path, **kw):
        saved["axes"] = {ax.get_title(): ax for ax in fig.axes}
        return real(fig, path, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    reward_vs_nfe(_results([0.9917, 0.9833, 1.0]), tmp_path / "p.png", reference_steps=50)
    axes = saved["axes"]
    acc = axes["judge_accuracy (metric ↑)"]
    lo, hi = acc.get_ylim()
    assert hi - lo >= 0.1 and hi <= 1.05 and lo >= -0.01
    assert acc.get_ylabel() == "value (higher is better)"
    assert axes["fid (metric ↓)"].get_ylabel() == "value (lower is better)"


def test_eval_json_is_readable_by_others(tmp_path):
    import os

    summary = {"kind": "config", "source": "x", "backbone": "toy", "teacher_steps": 8, "seed": 1, "rewards": [],
               "reward_names": ["reward"], "metric_names": [], "prompts": {"count": 1, "images_per_prompt": 1,
                                                                           "images": 1, "source": "x"},
               "results": {"base": {"2": {"steps": 2, "rewards": {"reward": {"mean": 0.1, "ci95": 0.0, "n": 1}},
                                          "metrics": {}}}}}
    old = os.umask(0o022)
    try:
        paths = write_eval_report(tmp_path, summary, {"base@2": torch.rand(1, 3, 8, 8)}, {"base@2": "base\n2 steps"},
                                  {"base@2": torch.tensor([0.1])}, ["a cat"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(paths["json"].stat().st_mode) == 0o644
    assert json.loads(paths["json"].read_text())["backbone"] == "toy"


@pytest.fixture
def saved_figure(monkeypatch):
    """``saved_figure["fig"]``: the matplotlib Figure the code under test saved last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, path, *a, **k):
        captured["fig"] = fig
        return real_savefig(fig, path, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    return captured


def test_grid_marks_each_image_with_the_judges_verdict(tmp_path, saved_figure):
    """A judge metric's marks frame each image green (right) or red (wrong, with what was wrong)."""
    import numpy as np

    from rats_core.evaluation.pictures import image_grid

    images = {"base": torch.rand(2, 3, 32, 32), "student": torch.rand(2, 3, 32, 32)}
    marks = {"base": [(False, "count, shape"), (True, "")], "student": [(True, ""), (True, "")]}
    path = image_grid(images, ["two red circles", "a blue square"], tmp_path / "g.png", columns=2,
                      rows={"base": "base", "student": "student"}, marks=marks)
    axes = saved_figure["fig"].axes
    titles = [ax.get_title() for ax in axes]
    assert titles == ["✗ count, shape", "✓ right", "✓ right", "✓ right"]
    frame = [tuple(np.round(ax.spines["left"].get_edgecolor()[:3], 2)) for ax in axes]
    red, green = (0.84, 0.1, 0.11), (0.1, 0.59, 0.25)
    assert frame == [red, green, green, green]
    assert path.stat().st_size > 0


def test_library_progress_bars_leave_logs_but_not_terminals(monkeypatch):
    """Hugging Face's own bars ("Loading weights", "Writing model shards") are dropped when stderr is a
    log file, kept on a terminal, and an explicit HF_HUB_DISABLE_PROGRESS_BARS wins."""
    import io

    from diffusers.utils import logging as dlog

    from rats_core.training import progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    dlog.enable_progress_bar()
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    progress.quiet_library_progress(Tty())
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ and dlog.is_progress_bar_enabled()
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    progress.quiet_library_progress(io.StringIO())
    assert dlog.is_progress_bar_enabled()
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    progress.quiet_library_progress(io.StringIO())
    try:
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and not dlog.is_progress_bar_enabled()
    finally:
        dlog.enable_progress_bar()


def test_library_bars_are_switched_off_when_diffusers_is_first_imported_not_before():
    """Quieting diffusers' bars imports nothing (torch would come with it, before a config error could be
    said): the switch happens when diffusers is first imported, in the same process."""
    import subprocess
    import sys

    code = ("import io, os, sys; os.environ.pop('HF_HUB_DISABLE_PROGRESS_BARS', None)\n"
            "from rats_core.training import progress\n"
            "progress.quiet_library_progress(io.StringIO())\n"
            "assert 'diffusers' not in sys.modules and 'torch' not in sys.modules\n"
            "from diffusers.utils import logging as dlog\n"
            "print(dlog.is_progress_bar_enabled())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_report_rows_read_base_teacher_student_by_steps():
    from rats_core.evaluation.report import markdown_table

    results = {k: {"steps": s, "reward": 1.0} for k, s in (
        ("base", 2), ("base_teacher_steps", 50), ("teacher", 50), ("student", 2),
        ("base_1", 1), ("base_4", 4), ("student_1", 1), ("student_4", 4))}
    rows = [line.split("|")[1:3] for line in markdown_table(results).splitlines()[2:]]
    assert [(name.strip(), int(steps)) for name, steps in rows] == [
        ("base model", 1), ("base model", 2), ("base model", 4), ("base model", 50), ("teacher", 50),
        ("RATS student", 1), ("RATS student", 2), ("RATS student", 4)]


def test_a_metric_whose_marks_fail_is_named():
    """marks() that raises, or returns the wrong number of marks, stops with a PluginError naming the metric."""
    from rats_core.errors import PluginError
    from rats_core.registry.interfaces import metric_marks

    class Raises:
        def __call__(self, images, prompts):
            return {}

        def marks(self, images, prompts):
            raise RuntimeError("boom")

    class Short(Raises):
        def marks(self, images, prompts):
            return [(True, "")]

    images = torch.rand(2, 3, 8, 8)
    assert metric_marks([("plain", lambda i, p: {})], images, ["a", "b"]) is None
    with pytest.raises(PluginError, match="metric 'judge': marks\\(\\) raised RuntimeError: boom"):
        metric_marks([("judge", Raises())], images, ["a", "b"])
    with pytest.raises(PluginError, match="returned 1 marks for 2 images"):
        metric_marks([("judge", Short())], images, ["a", "b"])


# ----------------------------------------------------------------------------- videos [B, 3, F, H, W]


def _grey_video(frames: int = 5, side: int = 4) -> torch.Tensor:
    """A video ``[3, F, side, side]`` whose frame k is a uniform grey of k / (F - 1)."""
    return torch.linspace(0, 1, frames).reshape(1, frames, 1, 1).expand(3, frames, side, side).clone()


def test_a_video_is_shown_as_its_first_middle_and_last_frame():
    from rats_core.evaluation.pictures import frame_strip

    video = _grey_video()
    strip = frame_strip(video)
    assert strip.shape == (3, 4, 3 * 4 + 2)  # three 4 px frames, a 1 px white gap between each two
    torch.testing.assert_close(strip[:, :, 0:4], video[:, 0])
    torch.testing.assert_close(strip[:, :, 5:9], video[:, 2])
    torch.testing.assert_close(strip[:, :, 10:14], video[:, 4])
    assert strip[:, :, 4].eq(1).all() and strip[:, :, 9].eq(1).all()
    image = torch.rand(3, 4, 4)
    assert frame_strip(image) is image


def test_a_video_is_saved_as_an_animated_gif_or_a_frame_strip_png(tmp_path):
    from PIL import Image, ImageSequence

    video = _grey_video()
    save_image(video, tmp_path / "v.gif", scale=2)
    with Image.open(tmp_path / "v.gif") as gif:
        frames = [f.convert("RGB") for f in ImageSequence.Iterator(gif)]
        assert gif.info["loop"] == 0 and gif.info["duration"] == 60  # 16 fps (62.5 ms) in GIF's 10 ms units
    assert len(frames) == 5 and all(f.size == (8, 8) for f in frames)
    assert [f.getpixel((3, 3)) for f in frames] == [(v, v, v) for v in (0, 64, 128, 191, 255)]
    save_image(video, tmp_path / "v.png", scale=2)
    with Image.open(tmp_path / "v.png") as png:
        assert png.size == (2 * 14, 2 * 4)
        assert [png.getpixel((x, 0)) for x in (0, 10, 20, 8)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255),
                                                                  (255, 255, 255)]  # frames 1, 3, 5 and a gap


def test_a_grid_of_videos_shows_frame_strips_and_says_which_frames(tmp_path, saved_figure):
    from rats_core.evaluation.pictures import image_grid

    videos = torch.stack([_grey_video(), 1 - _grey_video()])
    image_grid({"student": videos}, ["a", "b"], tmp_path / "g.png", rows={"student": "student"}, title="Samples")
    fig = saved_figure["fig"]
    assert fig._suptitle.get_text() == "Samples; each video: frames 1, 3, 5 of 5"
    shown = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert [a.shape for a in shown] == [(4, 14, 3), (4, 14, 3)]
    assert float(shown[0][0, 0, 0]) == 0.0 and float(shown[1][0, 0, 0]) == 1.0  # each video's own first frame


def test_metrics_see_video_frames_as_images_unless_they_score_video():
    """As image rewards do: 8 evenly spaced frames of each video, each with its video's prompt."""
    from rats_core.evaluation.evaluate import run_metrics

    seen = {}

    def frames(images, prompts):
        seen["frames"] = (tuple(images.shape), prompts)
        return {"brightness": images.mean().item()}

    class Motion:
        scores_video = True

        def __call__(self, videos, prompts):
            seen["video"] = tuple(videos.shape)
            return {"motion": (videos[:, :, 1:] - videos[:, :, :-1]).abs().mean().item()}

    videos = torch.stack([_grey_video(frames=9), _grey_video(frames=9)])
    out = run_metrics([("frames", frames), ("motion", Motion())], videos, ["a", "b"])
    assert seen["frames"] == ((16, 3, 4, 4), ["a"] * 8 + ["b"] * 8) and seen["video"] == (2, 3, 9, 4, 4)
    # frames 0, 1, 2, 3, 5, 6, 7, 8 of 9: the middle one (0.5) is left out, the mean stays 0.5 by symmetry
    assert out == pytest.approx({"brightness": 0.5, "motion": 0.125})


def test_a_judge_marks_a_video_wrong_when_any_judged_frame_is_wrong():
    from rats_core.evaluation.evaluate import grid_marker

    class Judge:
        def __call__(self, images, prompts):
            return {}

        def marks(self, images, prompts):  # right when the frame is bright enough
            return [(bool(m > 0.2), f"dark {m:.2f}") for m in images.mean(dim=(1, 2, 3)).tolist()]

    bright = torch.full((3, 5, 4, 4), 0.9)
    fading = _grey_video()  # frames 0, 0.25, 0.5, 0.75, 1
    mark = grid_marker([("plain", lambda i, p: {}), ("judge", Judge())])
    assert mark(torch.stack([bright, fading]), ["a", "b"]) == [(True, "dark 0.90"), (False, "dark 0.00")]
    assert grid_marker([("plain", lambda i, p: {})])(torch.stack([bright]), ["a"]) is None

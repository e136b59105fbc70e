"""Where each reward's weights come from, and whether they are there, without importing torch.

:class:`WeightsHint` says what to tell a user whose weights are missing (the model, the official
download, the option to set). The hints of every built-in reward are defined here once: the reward
modules load with them (``_weights.py``: ``resolve_file``, ``from_pretrained``) and the light factories
(plugin.py) check with them before anything heavy is imported (:func:`file_missing`,
:func:`folder_missing`), so that a run without weights names every missing model within a second or two
(``rats_core.weights.preflight``). A check answers only what is plain without loading: a path that does not
exist, or a Hub file or repo that is not in the local cache while nothing can be downloaded. Everything
else (a partial folder, a corrupt file) is left to the loader, which says the same things.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rats_core.errors import WeightsNotFoundError
from rats_core.weights import offline_reason

from .options import AESTHETIC_FILENAME, CLIP_ID, HPS_FILENAMES, IMAGEREWARD_TOKENIZER, PICKSCORE_ID

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
#: the Hub's legacy ids without an owner (``bert-base-uncased``, ImageReward's tokenizer): no dot, so that a
#: bare file name (``ImageReward.pt``) still reads as a path
_LEGACY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def is_hub_id(path: str) -> bool:
    """``owner/name``, or a legacy owner-less id, with nothing that only a file path would have."""
    return (bool(_HUB_ID.match(path)) or bool(_LEGACY_ID.match(path))) and ".." not in path


def hub_offline() -> bool:
    """The hub is offline when the env says so now (huggingface_hub reads it only at import)."""
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or env in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class WeightsHint:
    """What to tell a user whose weights are missing.

    ``what`` names the model ("ImageReward"), ``repo_id``/``filename`` the official download (a whole
    repo when ``filename`` is None, limited to the ``include`` patterns if given), ``option`` the reward
    option to set and ``example`` a value for it. ``url``: the official file is not on the Hugging Face
    hub but at this address (``repo_id`` then only names where it comes from).
    """

    what: str
    repo_id: str
    filename: str | None
    option: str
    example: str
    include: tuple[str, ...] = ()
    url: str | None = None

    def message(self, reason: str) -> str:
        if self.url:
            get = f"download {self.filename} from {self.url}"
            cmd = f"`wget -P /models '{self.url}'`"
        elif self.filename:
            get = f"download {self.filename} from the Hugging Face repo {self.repo_id}"
            cmd = f"`hf download {self.repo_id} {self.filename} --local-dir /models`"
        else:
            get = f"download the Hugging Face repo {self.repo_id}"
            include = "".join(f' --include "{p}"' for p in self.include)
            cmd = f"`hf download {self.repo_id}{include} --local-dir {self.example}`"
        return (f"{self.what} weights not found ({reason}): {get} (e.g. {cmd}) and set the reward's "
                f"`{self.option}` option to it, e.g. rewards.0.{self.option}={self.example} "
                f"(0 = the reward's index in `rewards`)")

    def error(self, reason: str) -> WeightsNotFoundError:
        return WeightsNotFoundError(self.message(reason))


# ----------------------------------------------------------------------------- the built-ins' weights

IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD = WeightsHint("ImageReward", IMAGEREWARD_REPO, "ImageReward.pt", "path", "/models/ImageReward.pt")
IMAGEREWARD_BERT = WeightsHint("ImageReward's BERT tokenizer", IMAGEREWARD_TOKENIZER, None, "tokenizer",
                               "/models/bert-base-uncased", include=("*.json", "*.txt"))
HPS_REPO = "xswu/HPSv2"
HPS = {v: WeightsHint(f"HPS{v}", HPS_REPO, f, "path", f"/models/{f}") for v, f in HPS_FILENAMES.items()}
PICKSCORE = WeightsHint("PickScore", PICKSCORE_ID, None, "path", "/models/PickScore_v1")
PICKSCORE_PROCESSOR_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PICKSCORE_PROCESSOR = WeightsHint(
    "PickScore's processor (tokenizer)", PICKSCORE_PROCESSOR_ID, None, "processor", "/models/CLIP-ViT-H-14-processor",
    include=("*.json", "*.txt"),  # tokenizer + preprocessor config only, not the 4 GB of CLIP weights
)
AESTHETIC_REPO = "christophschuhmann/improved-aesthetic-predictor"
AESTHETIC_URL = f"https://github.com/{AESTHETIC_REPO}/raw/main/{AESTHETIC_FILENAME}"
AESTHETIC_HEAD = WeightsHint("LAION aesthetic predictor (MLP)", AESTHETIC_REPO, AESTHETIC_FILENAME, "path",
                             f"/models/{AESTHETIC_FILENAME}", url=AESTHETIC_URL)
AESTHETIC_CLIP = WeightsHint("LAION aesthetic predictor's CLIP", CLIP_ID, None, "clip",
                             "/models/clip-vit-large-patch14", include=("*.json", "model.safetensors"))
CLIPSCORE = WeightsHint("CLIPScore's CLIP", CLIP_ID, None, "path", "/models/clip-vit-large-patch14",
                        include=("*.json", "*.txt", "model.safetensors"))
CLIPSCORE_PROCESSOR = WeightsHint("CLIPScore's processor (tokenizer)", CLIP_ID, None, "processor",
                                  "/models/clip-vit-large-patch14", include=("*.json", "*.txt"))


def pickscore_processor(path: str) -> str:
    """The model folder itself when it also holds a tokenizer and an image processor config (one folder
    with everything), otherwise the LAION processor the official snippet uses."""
    folder = Path(path).expanduser()
    has_tokenizer = (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()
    has_image_config = (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file()
    return str(folder) if folder.is_dir() and has_tokenizer and has_image_config else PICKSCORE_PROCESSOR_ID


# ----------------------------------------------------------------------------- quick checks


def _cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # noqa: BLE001 - a malformed id: the loader will say
        return True


def file_missing(path: str | None, hint: WeightsHint) -> str | None:
    """What :func:`._weights.resolve_file` would say is missing, when that is plain without loading; else None."""
    assert hint.filename is not None
    if path is None:
        if hint.url:
            return hint.message(f"the reward's `{hint.option}` option is not set")
        repo, filename = hint.repo_id, hint.filename
    else:
        local = Path(path).expanduser()
        if local.is_file():
            return None
        if local.is_dir():
            return None if (local / hint.filename).is_file() else hint.message(f"folder {local} has no {hint.filename}")
        if not is_hub_id(path):
            return hint.message(f"no file {local}")
        repo, filename = path, hint.filename
    if _cached(repo, filename) or not hub_offline():
        return None
    return hint.message(f"{repo}/{filename} is not in the Hugging Face cache and {offline_reason()}")


def folder_missing(path: str, hint: WeightsHint) -> str | None:
    """What :func:`._weights.from_pretrained` would say is missing, when that is plain without loading; else None."""
    local = Path(path).expanduser()
    if local.is_dir():
        return None
    if local.exists():
        return hint.message(f"{local} is a file; a folder or a Hugging Face repo id is needed")
    if not is_hub_id(path):
        return hint.message(f"no folder {local}")
    if _cached(path, "config.json") or _cached(path, "tokenizer_config.json") or not hub_offline():
        return None
    return hint.message(f"{path} is not in the Hugging Face cache and {offline_reason()}")

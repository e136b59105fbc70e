"""What the reward plugins' light factories (plugin.py) and the reward modules share, defined once: the
``dtype`` option, the official model ids and file names, CLIPScore's ``w``. Imports no torch.

The reward modules import these from here, never from plugin.py: the factories there import the reward
modules when they build one, so the other direction would close an import circle
(tests/core/test_import_graph.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

#: the ``dtype`` option of every reward plugin
DType = Literal["float32", "float16", "bfloat16"]

IMAGEREWARD_TOKENIZER = "google-bert/bert-base-uncased"  # the Hub's canonical id of bert-base-uncased
PICKSCORE_ID = "yuvalkirstain/PickScore_v1"
HPS_ARCHITECTURE = "ViT-H-14"
HPS_FILENAMES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
#: OpenAI CLIP ViT-L/14: the aesthetic predictor's embedding and CLIPScore's default model
CLIP_ID = "openai/clip-vit-large-patch14"
AESTHETIC_FILENAME = "sac+logos+ava1-l14-linearMSE.pth"
#: CLIPScore's ``w``: 100 as torchmetrics reports it (0-100), 2.5 as the paper defines it
ClipW = Annotated[float, Field(gt=0)]

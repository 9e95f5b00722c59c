"""jpop-musicgen helpers: data preparation, fine-tuning and evaluation of MusicGen for a genre.

Stages (README.md, "Data layout"): download -> prepare (split, chunk, label, caption, manifests) ->
finetune (tokens, train: full or LoRA, export) -> evaluate (CE/PPL, FAD/CLAP, generate, listen, report).
Each stage is a module with a dataclass config and one entry function, also reachable as
`python -m jpop_helpers <verb>`.
"""
import os

from . import quiet

# essentia-tensorflow loads TensorFlow, which prints CUDA probing lines on machines without a GPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# audiocraft's datasets need a team config that its wheel lacks (FileNotFoundError .../config/teams/default.yaml).
os.environ.setdefault("AUDIOCRAFT_CONFIG", os.path.join(os.path.dirname(__file__), "audiocraft_team.yaml"))

quiet.install()  # the dependencies' known messages no user can act on (each by its text)

__version__ = "0.1.0"

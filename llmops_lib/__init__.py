"""Support library of the on-prem LLM-Ops course: one `setup()` call per notebook."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

from .core import hardware, hf_noise
from .planning import profiles
from .session import Session

__all__ = ["Session", "setup"]
__version__ = "0.1.0"


NO_GPU_BANNER = """
!!! This notebook is written for a GPU, and this machine has none (CUDA not visible).
!!! It runs on the CPU with the {profile!r} profile: the GPU sections are skipped or slow.
!!! On Colab: Runtime -> Change runtime type -> T4 GPU, then Runtime -> Run all.
"""


OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def go_offline() -> None:
    """Switch the Hugging Face libraries to offline mode, also when already imported.

    huggingface_hub and datasets read these variables once, at import, into constants
    (transformers asks huggingface_hub): a notebook that imported transformers before
    setup() would otherwise stay online. So the constants are set too.
    """
    for name in OFFLINE_ENV:
        os.environ[name] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    hf_datasets = sys.modules.get("datasets.config")
    if hf_datasets is not None:
        hf_datasets.HF_HUB_OFFLINE = hf_datasets.HF_DATASETS_OFFLINE = True


def setup(profile: str | None = None, quiet: bool = False, wants_gpu: bool = False) -> Session:
    """Detect the machine, pick the profile and print a summary; call once per notebook.

    The profile comes from the argument, else LLMOPS_PROFILE, else the hardware
    (Colab T4 -> colab-t4, L4/A100 -> colab-l4, anything else -> tiny). An offline
    profile switches huggingface_hub and transformers to offline mode, so a stray
    download fails loudly instead of reaching the network. `wants_gpu`: the notebook's
    lesson needs a GPU; without one a banner says so (also when `quiet`).
    """
    hf_noise.ignore_iprogress()  # tqdm.auto's ipywidgets warning teaches nothing (core.hf_noise)
    hw = hardware.detect(check_token=False)
    chosen = profiles.resolve(profile, hw)
    if chosen.offline:
        go_offline()
    if hw.runtime == "colab":  # llama.cpp comes on first use, not here (colab.py)
        from .planning.colab import install_import_hook

        install_import_hook()
    hw = replace(hw, hf_token=hardware.has_hf_token())
    session = Session(profile=chosen, hardware=hw)
    if wants_gpu and hw.gpu_name is None:
        print(NO_GPU_BANNER.format(profile=chosen.name))
    if not quiet:
        for item, value in session.summary()["value"].items():
            print(f"{item:<18} {value}")
    return session

"""The Hugging Face Hub, in one place: resolve a model, checkpoint or dataset to a local folder; push a folder.

`resolve` is the only road from a name to files: a local folder is used as it
is, an offline tiny backbone is built once, and a Hub id comes from the local
cache or a download. With no reachable Hub (or `HF_HUB_OFFLINE=1`) a Hub id that
is not cached fails at once with a message saying what to do, never a hang.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files a model checkout needs; skips the original-format and ONNX copies some backbone repos carry.
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


class HubUnavailableError(RuntimeError):
    """A model must come from the Hugging Face Hub, and the Hub cannot be reached."""


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_repo_id(text: str) -> bool:
    """True for `owner/name` that is not a local path (no ./, /, ~ prefix, exactly one slash)."""
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/", "~"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Fast TCP check of the Hub endpoint, so an offline machine fails in seconds, not ~30 s."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve(name: str, kind: str = "backbone", revision: str | None = None, allow_patterns: list[str] | None = None,
            error: type[Exception] = HubUnavailableError) -> Path:
    """Local folder for `name` (a folder, a tiny model id or a Hub id); `kind` is "backbone",
    "audio encoder", "checkpoint" or "dataset". Every failure raises `error` with a message a person can act on."""
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise error(f"{p} is a file; pass the {kind} folder")
    if kind != "dataset" and name.startswith("neon-tiny/"):  # built offline on first use
        from neon.backbones.tiny import tiny_model_dir

        return tiny_model_dir(name)
    if not looks_like_repo_id(name):
        raise error(f"{name} is neither a {kind} folder nor a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = env_true("HF_HUB_OFFLINE") or not hub_reachable()
    try:
        return Path(snapshot_download(name, repo_type="dataset" if kind == "dataset" else "model", revision=revision,
                                      local_files_only=offline, allow_patterns=None if offline else allow_patterns))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if env_true("HF_HUB_OFFLINE") else "the Hugging Face Hub is unreachable"
        get = f"hf download {'--repo-type dataset ' if kind == 'dataset' else ''}{name}"
        hint = ("use an offline tiny backbone (neon-tiny/qwen2.5-vl, neon-tiny/qwen2.5-omni)" if kind == "backbone"
                else "pass a local folder")
        raise error(f"{kind} {name!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and {why}. Download "
                    f"it where there is network (`{get}`) and copy the cache here, or {hint}.") from None


def push_folder(folder: str | Path, repo_id: str, private: bool = False, message: str = "Neon checkpoint",
                retries: int = 3, backoff_s: float = 2.0, path_in_repo: str | None = None) -> dict:
    """Upload `folder` to the model repo `repo_id`; returns {"ok", "repo_id", "attempts", "error"}."""
    from huggingface_hub import HfApi

    api = HfApi()
    error = None
    for attempt in range(1, retries + 1):
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message,
                              path_in_repo=path_in_repo)
            log.info("pushed %s to https://huggingface.co/%s", folder, repo_id)
            return {"ok": True, "repo_id": repo_id, "attempts": attempt, "error": None}
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            log.warning("push to %s failed (attempt %d/%d): %s", repo_id, attempt, retries, error)
            if attempt < retries:
                time.sleep(backoff_s * 2 ** (attempt - 1))
    return {"ok": False, "repo_id": repo_id, "attempts": retries, "error": error}

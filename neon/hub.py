"""Uploading a folder to the Hugging Face Hub with retries; never touches the local copy."""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


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

"""Hugging Face Hub access that never hangs: cache first, a 3-second reachability probe, clear errors."""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request

import huggingface_hub
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

from .errors import WMoEError

PROBE_TIMEOUT_S = 3.0


class WeightsNotFoundError(WMoEError, FileNotFoundError):
    """Weights that are neither on disk nor reachable; the message says how to supply them."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when the Hub endpoint answers an HTTP request (any status) within `timeout`, DNS included.

    A TCP connection alone is not enough: a server (or a network box) that accepts connections and never
    answers would pass, and the download after it would hang for minutes of retries.
    """
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT)
    result: list[bool] = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            result.append(True)
        except urllib.error.HTTPError:  # an answer, whatever its status
            result.append(True)
        except (OSError, ValueError):
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def unavailable_reason() -> str | None:
    """Why the Hub cannot be used right now, or None when it can."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return (
            f"the Hub ({os.environ.get('HF_ENDPOINT', constants.ENDPOINT)}) is unreachable from this machine"
        )
    return None


def cached_or_download(
    repo_id: str, filenames: list[str], revision: str | None = None, how_to_fix: str = ""
) -> str:
    """Path of the first of `filenames` found in the cache, else downloaded; fails fast offline."""
    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(hit, str):
            return hit
    reason = unavailable_reason()
    if reason is None:
        for name in filenames:
            try:
                return hf_hub_download(repo_id, name, revision=revision)
            except huggingface_hub.errors.EntryNotFoundError:
                continue
        reason = f"none of {filenames} exists in the Hub repo {repo_id}"
    cache = os.environ.get("HF_HUB_CACHE", constants.HF_HUB_CACHE)
    raise WeightsNotFoundError(
        f"{repo_id}: {' or '.join(filenames)} not found in the local cache ({cache}) and {reason}. "
        + how_to_fix
    )

"""The Hugging Face Hub without a network: a few seconds and one line, not a minute of retries.

huggingface_hub retries a failed request five times with growing pauses, printing each retry. Before anything is
fetched from the Hub (a dataset, pretrained weights), hw3 checks in a few seconds whether the Hub answers at all.
If not, it switches this process to offline mode (what HF_HUB_OFFLINE=1 does), so that a copy in the local cache
still loads and a missing one fails at once, with hw3's one-line error.
"""

from __future__ import annotations

import os
import sys
import threading

PROBE_SECONDS = 4.0
ANSWERED = False  # the Hub answered this process once: not asked again


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (or as go_offline_unless_reachable set it)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def reachable(seconds: float = PROBE_SECONDS) -> bool:
    """Does the Hub endpoint (HF_ENDPOINT) answer an HTTP request within `seconds`? (DNS included: in a thread.)"""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    answered = []

    def probe() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=seconds)
            answered.append(True)
        except Exception:  # any failure to connect means "not reachable"
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(answered)


def go_offline_unless_reachable() -> bool:
    """Switch to offline mode when the Hub does not answer; True when offline (before or now)."""
    global ANSWERED
    if offline():
        return True
    if ANSWERED or (ANSWERED := reachable()):  # asked once per process
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:  # it copied the flag when it was imported
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True
    return True

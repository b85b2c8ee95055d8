"""Every aiohttp AppKey in one place: the typed state the rooms share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from deepseekd.config import Settings
from deepseekd.lifecycle import Lifecycle

if TYPE_CHECKING:
    from deepseekd.api.inference import InferenceService
    from deepseekd.security.apikeys import KeyVerifier

SETTINGS = web.AppKey("settings", Settings)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
INFERENCE = web.AppKey("inference", "InferenceService")
KEY_VERIFIER = web.AppKey("key_verifier", "KeyVerifier")

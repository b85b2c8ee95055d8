"""Turns validated OpenAI requests into engine calls: model lookup, context and cap checks."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

from deepseekd.api.errors import APIError, bad_request, unavailable
from deepseekd.api.lora import LoraService, check_adapter
from deepseekd.api.reasoning import ReasoningSplits
from deepseekd.api.schemas import ChatCompletionRequest, CompletionRequest, _Sampling
from deepseekd.config import ApiSettings
from deepseekd.engine.types import (
    Engine,
    EngineRejected,
    EngineUnavailable,
    GenerationOptions,
    GenerationStep,
)
from deepseekd.lifecycle import Lifecycle, Phase


@dataclass(frozen=True)
class Prepared:
    """A request ready for the engine."""

    model: str
    prompt_ids: list[int]
    options: GenerationOptions
    reasoning_parser: str | None = None
    """Set for chat requests to a reasoning model: the output is split into reasoning and answer."""


class InferenceService:
    def __init__(self, lifecycle: Lifecycle, limits: ApiSettings,
                 lora: LoraService | None = None) -> None:
        self._life = lifecycle
        self._limits = limits
        self._lora = lora

    def engine(self) -> Engine:
        """The engine, or a 503 that says why it cannot take requests now."""
        life = self._life
        # DRAINING too: a request admitted before SIGTERM (its body still arriving) must finish.
        if life.phase in (Phase.READY, Phase.DRAINING) and life.engine is not None:
            return life.engine
        if life.phase in (Phase.LOADING, Phase.WARMING):
            raise unavailable("the model is loading and warming up; retry shortly", code="warming_up")
        if life.phase is Phase.DRAINING:
            raise unavailable("the service is shutting down", code="shutting_down")
        raise unavailable("the inference engine is not running")

    def check_model(self, requested: str | None) -> Engine:
        """The engine serving ``requested`` (``"<base>"`` or ``"<base>:<adapter>"``)."""
        engine = self.engine()
        base, _, adapter = (engine.model_name if requested is None else requested).partition(":")
        if base != engine.model_name:
            raise APIError(
                404,
                f"model '{requested}' does not exist; available: {engine.model_name}",
                code="model_not_found",
                param="model",
            )
        if adapter:
            check_adapter(self._lora, adapter)
        return engine

    @staticmethod
    def _for_model(requested: str | None, engine: Engine, options: GenerationOptions
                   ) -> tuple[str, GenerationOptions]:
        """The served model name and options, with the LoRA adapter ``requested`` selects."""
        adapter = (requested or "").partition(":")[2]
        if not adapter:
            return engine.model_name, options
        return (f"{engine.model_name}:{adapter}",
                dataclasses.replace(options, adapter=adapter))

    async def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        engine = self.check_model(req.model)
        if len(req.messages) > self._limits.max_messages:
            raise bad_request(
                f"messages: at most {self._limits.max_messages} messages per request",
                param="messages",
            )
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.content}
            for m in req.messages
        ]
        try:
            prompt_ids = await engine.encode_chat(messages)
        except (ValueError, TypeError, KeyError) as exc:
            # Chat templates raise for sequences they cannot render (e.g. two system turns).
            raise bad_request(
                f"messages: the model's chat template cannot render these messages: {exc}",
                param="messages",
            ) from None
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs: requires logprobs to be true", param="top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        model, options = self._for_model(req.model, engine, self._options(
            req, engine, prompt_ids, max_tokens, param, logprobs, "top_logprobs"))
        return Prepared(model, prompt_ids, options, engine.reasoning_parser)

    async def prepare_completion(self, req: CompletionRequest) -> Prepared:
        engine = self.check_model(req.model)
        if not req.prompt:
            raise bad_request("prompt: must not be empty", param="prompt")
        prompt_ids = await engine.encode_text(req.prompt)
        model, options = self._for_model(req.model, engine, self._options(
            req, engine, prompt_ids, req.max_tokens, "max_tokens", req.logprobs, "logprobs"))
        return Prepared(model, prompt_ids, options)

    async def prepare_simple(self, prompt: str, max_tokens: int | None) -> Prepared:
        engine = self.engine()
        prompt_ids = await engine.encode_chat([{"role": "user", "content": prompt}])
        req = _Sampling()
        return Prepared(
            engine.model_name,
            prompt_ids,
            self._options(req, engine, prompt_ids, max_tokens, "max_tokens", None, "logprobs"),
            engine.reasoning_parser,
        )

    def _options(
        self,
        req: _Sampling,
        engine: Engine,
        prompt_ids: Sequence[int],
        max_tokens: int | None,
        max_param: str,
        logprobs: int | None,
        logprobs_param: str,
    ) -> GenerationOptions:
        lim = self._limits
        context = engine.max_model_len
        room = context - len(prompt_ids)
        if room <= 0:
            prompt_param = "messages" if logprobs_param == "top_logprobs" else "prompt"
            raise bad_request(
                f"{prompt_param}: the prompt is {len(prompt_ids)} tokens, but this model's "
                f"context is {context} tokens; shorten the prompt",
                param=prompt_param,
                code="context_length_exceeded",
            )
        if req.n > lim.max_n:
            raise bad_request(f"n: at most {lim.max_n} choices per request", param="n")
        if logprobs is not None and logprobs > lim.max_logprobs:
            raise bad_request(
                f"{logprobs_param}: at most {lim.max_logprobs} on this server", param=logprobs_param
            )
        if max_tokens is None:
            max_tokens = min(room, lim.max_tokens_cap)
        elif max_tokens > lim.max_tokens_cap:
            raise bad_request(
                f"{max_param}: at most {lim.max_tokens_cap} on this server", param=max_param
            )
        elif max_tokens > room:
            raise bad_request(
                f"{max_param}: this model's context is {context} tokens and the prompt takes "
                f"{len(prompt_ids)}, so at most {room} tokens can be generated; you asked for {max_tokens}",
                param=max_param,
                code="context_length_exceeded",
            )
        return GenerationOptions(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            n=req.n,
            stop=req.stop,
            seed=req.seed,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logprobs=logprobs,
            ignore_eos=req.ignore_eos,
        )

    async def run(
        self, prepared: Prepared, request_id: str, *, stream: bool
    ) -> AsyncIterator[GenerationStep]:
        """Engine steps; engine failures become 503/400. Closing the iterator aborts the request.
        A reasoning model's chat output comes split: ``text`` the answer, ``reasoning`` the rest."""
        engine = self.engine()
        split = ReasoningSplits(engine) if prepared.reasoning_parser else None
        gen = engine.generate(prepared.prompt_ids, prepared.options, request_id, stream=stream)
        async with contextlib.aclosing(gen):
            try:
                async for step in gen:
                    if split is not None:
                        split(step)
                    yield step
            except EngineUnavailable as exc:
                raise unavailable(str(exc)) from exc
            except EngineRejected as exc:
                raise bad_request(str(exc)) from exc

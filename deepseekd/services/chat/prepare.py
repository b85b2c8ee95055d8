"""From a validated request to engine input: the model (and LoRA adapter) it names, the
prompt tokenized with the model's chat template, and the caps this server sets. Every
refusal names the request field it concerns."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from deepseekd.config import ApiSettings
from deepseekd.domain.errors import Invalid, NotFound
from deepseekd.engine.types import Engine, GenerationOptions
from deepseekd.services.chat.request import (
    ChatRequest,
    CompletionRequest,
    DefaultSampling,
    Prepared,
    Sampling,
)
from deepseekd.services.lora import LoraService


class Preparer:
    def __init__(self, limits: ApiSettings, lora: LoraService) -> None:
        self._limits = limits
        self._lora = lora

    def check_model(self, engine: Engine, requested: str | None) -> None:
        """``requested`` must be ``"<base>"`` or ``"<base>:<loaded adapter>"``."""
        base, _, adapter = (engine.model_name if requested is None else requested).partition(":")
        if base != engine.model_name:
            raise NotFound(
                f"model '{requested}' does not exist; available: {engine.model_name}",
                code="model_not_found",
                field="model",
            )
        if adapter:
            self._lora.check_selectable(adapter)

    @staticmethod
    def _for_model(
        requested: str | None, engine: Engine, options: GenerationOptions
    ) -> tuple[str, GenerationOptions]:
        """The served model name and options, with the LoRA adapter ``requested`` selects."""
        adapter = (requested or "").partition(":")[2]
        if not adapter:
            return engine.model_name, options
        return f"{engine.model_name}:{adapter}", dataclasses.replace(options, adapter=adapter)

    async def chat(self, engine: Engine, req: ChatRequest) -> tuple[Prepared, list[dict[str, str]]]:
        """The prepared request and its messages as the history keeps them."""
        self.check_model(engine, req.model)
        if len(req.messages) > self._limits.max_messages:
            raise Invalid(
                f"messages: at most {self._limits.max_messages} messages per request",
                field="messages",
            )
        sent = [{"role": m.role, "content": m.content} for m in req.messages]
        messages = [
            {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
            for m in sent
        ]
        try:
            prompt_ids = await engine.encode_chat(messages)
        except (ValueError, TypeError, KeyError) as exc:
            # Chat templates raise for sequences they cannot render (e.g. two system turns).
            raise Invalid(
                f"messages: the model's chat template cannot render these messages: {exc}",
                field="messages",
            ) from None
        if req.top_logprobs is not None and not req.logprobs:
            raise Invalid("top_logprobs: requires logprobs to be true", field="top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        model, options = self._for_model(
            req.model,
            engine,
            self._options(req, engine, prompt_ids, max_tokens, param, logprobs, "top_logprobs"),
        )
        return Prepared(model, prompt_ids, options, engine.reasoning_parser), sent

    async def completion(
        self, engine: Engine, req: CompletionRequest, *, hide_reasoning: bool = False
    ) -> Prepared:
        """``hide_reasoning``: the caller may not see a reasoning model's reasoning, so the
        output is split and only the answer is returned (and no logprobs)."""
        self.check_model(engine, req.model)
        if not req.prompt:
            raise Invalid("prompt: must not be empty", field="prompt")
        prompt_ids = await engine.encode_text(req.prompt)
        parser = engine.reasoning_parser if hide_reasoning else None
        if parser is not None and req.logprobs is not None:
            raise Invalid(
                "logprobs: not available to your role with this reasoning model "
                "(they would spell out its reasoning)",
                field="logprobs",
            )
        model, options = self._for_model(
            req.model,
            engine,
            self._options(
                req, engine, prompt_ids, req.max_tokens, "max_tokens", req.logprobs, "logprobs"
            ),
        )
        return Prepared(model, prompt_ids, options, parser)

    async def simple(self, engine: Engine, prompt: str, max_tokens: int | None) -> Prepared:
        prompt_ids = await engine.encode_chat([{"role": "user", "content": prompt}])
        options = self._options(
            DefaultSampling(), engine, prompt_ids, max_tokens, "max_tokens", None, "logprobs"
        )
        return Prepared(engine.model_name, prompt_ids, options, engine.reasoning_parser)

    def _options(
        self,
        req: Sampling,
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
            raise Invalid(
                f"{prompt_param}: the prompt is {len(prompt_ids)} tokens, but this "
                f"model's context is {context} tokens; shorten the prompt",
                field=prompt_param,
                code="context_length_exceeded",
            )
        if req.n > lim.max_n:
            raise Invalid(f"n: at most {lim.max_n} choices per request", field="n")
        if logprobs is not None and logprobs > lim.max_logprobs:
            raise Invalid(
                f"{logprobs_param}: at most {lim.max_logprobs} on this server", field=logprobs_param
            )
        if max_tokens is None:
            max_tokens = min(room, lim.max_tokens_cap)
        elif max_tokens > lim.max_tokens_cap:
            raise Invalid(
                f"{max_param}: at most {lim.max_tokens_cap} on this server", field=max_param
            )
        elif max_tokens > room:
            raise Invalid(
                f"{max_param}: this model's context is {context} tokens and the "
                f"prompt takes {len(prompt_ids)}, so at most {room} tokens can be "
                f"generated; you asked for {max_tokens}",
                field=max_param,
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

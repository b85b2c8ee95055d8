"""From a validated request to engine input: the model (and LoRA adapter) it names, the
prompt tokenized with the model's chat template, and the caps this server sets. Every
refusal names the request field it concerns."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from deepseekd.config import ApiSettings
from deepseekd.domain.errors import Invalid, NotFound
from deepseekd.engine.types import Engine, GenerationOptions, Structured
from deepseekd.services.chat.request import (
    ChatRequest,
    CompletionRequest,
    DefaultSampling,
    Prepared,
    Sampling,
    message_dict,
)
from deepseekd.services.chat.structured import structured
from deepseekd.services.chat.tools import ToolPlan, plan_tools, template_messages
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

    async def chat(
        self, engine: Engine, req: ChatRequest, salt: str | None = None
    ) -> tuple[Prepared, list[dict[str, Any]]]:
        """The prepared request and its messages as the history keeps them. ``salt``
        separates the caller's prefix cache from everyone else's."""
        self.check_model(engine, req.model)
        if len(req.messages) > self._limits.max_messages:
            raise Invalid(
                f"messages: at most {self._limits.max_messages} messages per request",
                field="messages",
            )
        sent = [message_dict(m) for m in req.messages]
        plan = plan_tools(req, engine, self._limits)
        prefix = sent[-1]["content"] if sent[-1].get("prefix") else None
        constraint = self._constraint(req, plan, prefix)
        prompt_ids = await self._render(engine, sent, plan, prefix is not None)
        if req.top_logprobs is not None and not req.logprobs:
            raise Invalid("top_logprobs: requires logprobs to be true", field="top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        options = self._options(
            req, engine, prompt_ids, max_tokens, param, logprobs, "top_logprobs"
        )
        options = dataclasses.replace(
            options,
            structured=constraint,
            cache_salt=salt,
            skip_special_tokens=not (
                plan is not None and plan.mode == "auto" and engine.tool_parser_keeps_special_tokens
            ),
        )
        model, options = self._for_model(req.model, engine, options)
        # A prefix is continued as the answer itself: no reasoning opens before it.
        parser = engine.reasoning_parser if prefix is None else None
        return Prepared(model, prompt_ids, options, parser, plan, prefix), sent

    def _constraint(
        self, req: ChatRequest, plan: ToolPlan | None, prefix: str | None
    ) -> Structured | None:
        constraint = structured(req, self._limits)
        schema = plan.guided_schema() if plan is not None else None
        if plan is None or schema is None:
            return constraint
        if constraint is not None:
            field = constraint.param.split(".")[0]
            raise Invalid(
                f"{field}: cannot be combined with tool_choice {plan.mode!r} (which already "
                "holds the output to the tools' schemas)",
                field=field,
            )
        if prefix is not None:
            raise Invalid(
                "messages: a prefix cannot be combined with a required or named tool call",
                field="messages",
            )
        return Structured("json_schema", schema, "tools")

    @staticmethod
    async def _render(
        engine: Engine, sent: list[dict[str, Any]], plan: ToolPlan | None, continue_final: bool
    ) -> list[int]:
        messages = [
            {
                **{k: v for k, v in m.items() if k != "prefix"},
                "role": "system" if m["role"] == "developer" else m["role"],
            }
            for m in sent
        ]
        tools = plan.prompt_tools if plan is not None else ()
        knows = engine.chat_template_knows_tools
        try:
            return await engine.encode_chat(
                template_messages(messages, tools, knows),
                tools=tools if knows else None,
                continue_final=continue_final,
            )
        except (ValueError, TypeError, KeyError) as exc:
            # Chat templates raise for sequences they cannot render (e.g. two system turns).
            raise Invalid(
                f"messages: the model's chat template cannot render these messages: {exc}",
                field="messages",
            ) from None

    async def completion(
        self,
        engine: Engine,
        req: CompletionRequest,
        *,
        hide_reasoning: bool = False,
        salt: str | None = None,
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
        options = self._options(
            req, engine, prompt_ids, req.max_tokens, "max_tokens", req.logprobs, "logprobs"
        )
        options = dataclasses.replace(
            options, structured=structured(req, self._limits), cache_salt=salt
        )
        model, options = self._for_model(req.model, engine, options)
        return Prepared(model, prompt_ids, options, parser)

    async def simple(
        self, engine: Engine, prompt: str, max_tokens: int | None, salt: str | None = None
    ) -> Prepared:
        prompt_ids = await engine.encode_chat([{"role": "user", "content": prompt}])
        options = self._options(
            DefaultSampling(), engine, prompt_ids, max_tokens, "max_tokens", None, "logprobs"
        )
        options = dataclasses.replace(options, cache_salt=salt)
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
            logit_bias=self._bias(req, engine),
            top_k=max(req.top_k, 0),
            min_p=req.min_p,
            repetition_penalty=req.repetition_penalty,
        )

    @staticmethod
    def _bias(req: Sampling, engine: Engine) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` with every token id checked against the model's vocabulary (vLLM
        does not check, and an id past it would fail inside the engine)."""
        if not req.logit_bias:
            return ()
        vocab = engine.vocab_size
        out = []
        for token, bias in req.logit_bias.items():
            if int(token) >= vocab:
                raise Invalid(
                    f"logit_bias: token {token} is not in this model's vocabulary "
                    f"(ids 0 to {vocab - 1})",
                    field="logit_bias",
                )
            out.append((int(token), float(bias)))
        return tuple(out)

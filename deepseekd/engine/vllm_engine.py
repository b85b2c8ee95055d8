"""The vLLM engine: AsyncLLM with prefix caching, chat templates and abort on disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm.config.structured_outputs import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import GracefulHTTPError, VLLMClientError
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

from deepseekd.config import EngineSettings, LoraSettings
from deepseekd.engine.reasoning import Reasoning, ReasoningSplitter
from deepseekd.engine.sampling import to_sampling_params
from deepseekd.engine.tools import ToolCallSplitter
from deepseekd.engine.types import (
    ChoiceDelta,
    EngineRejected,
    EngineStats,
    EngineUnavailable,
    GenerationOptions,
    GenerationStep,
    TokenLogprob,
)
from deepseekd.engine.vllm_reasoning import load_reasoning, reasoning_parser_name
from deepseekd.engine.vllm_tools import ToolParsing, load_tool_parsing

log = logging.getLogger(__name__)


def device_kind() -> str:
    """'cpu' or 'cuda' (or another accelerator name) as vLLM's platform sees it."""
    return "cpu" if current_platform.is_cpu() else str(current_platform.device_type)


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to start the engine, resolved from settings."""

    model_path: Path
    model_name: str
    settings: EngineSettings
    """With ``tensor_parallel_size`` resolved (0 → what preflight picked)."""
    max_logprobs: int
    lora: LoraSettings = LoraSettings()
    quantization: str | None = None
    """vLLM's name for the quantization (``preflight.vllm_quantization``)."""
    reasoning_parser: str | None = None
    """The reasoning parser picked before the engine is built (guided decoding then
    constrains the answer, not the reasoning)."""


class _StatsSink(StatLoggerBase):
    """Receives vLLM's per-step scheduler stats (queue, KV cache) for our own metrics."""

    def __init__(self, vllm_config: object, engine_index: int, target: EngineStats) -> None:
        self._target = target

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self._target.running = scheduler_stats.num_running_reqs
            self._target.waiting = (
                scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
            )
            self._target.kv_cache_usage = scheduler_stats.kv_cache_usage

    def log_engine_initialized(self) -> None:
        """Nothing to log: the daemon reports readiness itself."""


def engine_args(spec: EngineSpec, device: str | None = None) -> AsyncEngineArgs:
    """vLLM's arguments for ``spec`` on ``device`` (default: the installed build's)."""
    s = spec.settings
    kwargs: dict[str, object] = dict(
        model=str(spec.model_path),
        served_model_name=[spec.model_name],
        dtype=s.dtype,
        max_model_len=s.max_model_len or None,
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens or None,
        enforce_eager=s.enforce_eager,
        enable_prefix_caching=s.enable_prefix_caching,
        quantization=spec.quantization,
        max_logprobs=max(spec.max_logprobs, 1),
        disable_log_stats=False,  # the stats feed our metrics; vLLM's log lines stay off
        enable_log_requests=False,  # request logs would carry prompts
        structured_outputs_config=StructuredOutputsConfig(
            backend=s.structured_outputs_backend,  # type: ignore[arg-type]
            disable_any_whitespace=s.structured_outputs_compact,
        ),
    )
    if spec.reasoning_parser:
        kwargs["reasoning_parser"] = spec.reasoning_parser
    if (device or device_kind()) != "cpu":
        kwargs["gpu_memory_utilization"] = s.gpu_memory_utilization
        # One engine process per GPU (vLLM's multiprocessing executor); NCCL between them.
        kwargs["tensor_parallel_size"] = max(s.tensor_parallel_size, 1)
        kwargs["pipeline_parallel_size"] = s.pipeline_parallel_size
    if spec.lora.enabled:
        # vLLM reserves max_loras slots of max_lora_rank per layer; max_cpu_loras adapters
        # stay loaded in host memory (more would be evicted and re-read from disk).
        kwargs.update(
            enable_lora=True,
            max_loras=spec.lora.max_loras,
            max_lora_rank=spec.lora.max_rank,
            max_cpu_loras=spec.lora.max_adapters,
        )
    return AsyncEngineArgs(**kwargs)  # type: ignore[arg-type]


class VllmEngine:
    """One AsyncLLM for the daemon's lifetime. Use as ``async with VllmEngine(spec) as e``."""

    def __init__(self, spec: EngineSpec) -> None:
        self._spec = spec
        self._llm: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._max_model_len = 0
        self._dead = False
        self._stats = EngineStats()
        self._loras: dict[str, LoRARequest] = {}
        self._lora_ids = itertools.count(1)
        self._reasoning: Reasoning | None = None
        self._tools: ToolParsing | None = None
        self._template = ""

    async def __aenter__(self) -> VllmEngine:
        # Building AsyncLLM spawns the engine core and loads the weights: keep the loop free.
        # If we are cancelled meanwhile, wait for the thread and shut the engine down, so no
        # engine process outlives the daemon.
        sink = lambda vllm_config, engine_index=0: _StatsSink(  # noqa: E731
            vllm_config, engine_index, self._stats
        )
        if self._spec.reasoning_parser is None and self._spec.settings.reasoning_parser != "none":
            picked = await asyncio.to_thread(
                reasoning_parser_name, self._spec.settings.reasoning_parser, self._spec.model_path
            )
            self._spec = dataclasses.replace(self._spec, reasoning_parser=picked)
        building = asyncio.ensure_future(
            asyncio.to_thread(
                AsyncLLM.from_engine_args, engine_args(self._spec), stat_loggers=[sink]
            )
        )
        try:
            self._llm = await asyncio.shield(building)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                (await building).shutdown()
            raise
        self._tokenizer = self._llm.get_tokenizer()
        self._max_model_len = int(self._llm.model_config.max_model_len)
        template = getattr(self._tokenizer, "chat_template", None) or ""
        self._template = template if isinstance(template, str) else str(template)
        try:
            self._reasoning = load_reasoning(
                self._spec.settings.reasoning_parser,
                self._tokenizer,
                getattr(self._llm.model_config.hf_config, "architectures", None) or (),
            )
            self._tools = load_tool_parsing(self._spec.settings.tool_parser, self._tokenizer)
        except BaseException:
            self._llm.shutdown()
            self._llm = None
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()

    # -- Engine protocol -------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._spec.model_name

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def vocab_size(self) -> int:
        assert self._llm is not None
        return int(self._llm.model_config.get_vocab_size())

    @property
    def device(self) -> str:
        return device_kind()

    def stats(self) -> EngineStats:
        return self._stats

    @property
    def reasoning_parser(self) -> str | None:
        return self._reasoning.name if self._reasoning else None

    def reasoning_splitter(self) -> ReasoningSplitter | None:
        return self._reasoning.splitter() if self._reasoning else None

    @property
    def chat_template_knows_tools(self) -> bool:
        return "tools" in self._template

    @property
    def tool_parser(self) -> str | None:
        return self._tools.name if self._tools else None

    @property
    def tool_parser_keeps_special_tokens(self) -> bool:
        return bool(self._tools and self._tools.keeps_special_tokens)

    def tool_call_splitter(
        self, tools: Sequence[dict[str, Any]], *, stream: bool
    ) -> ToolCallSplitter | None:
        return self._tools.splitter(tools, stream=stream) if self._tools else None

    @property
    def dead(self) -> bool:
        if self._dead:
            return True
        if self._llm is not None and self._llm.errored:
            self._dead = True
        return self._dead

    async def check_health(self) -> None:
        if self._llm is None or self.dead:
            raise EngineUnavailable("the inference engine is not running")
        try:
            await self._llm.check_health()
        except EngineDeadError as exc:
            self._dead = True
            raise EngineUnavailable("the inference engine died") from exc

    async def add_adapter(self, name: str, path: str) -> None:
        llm = self._llm
        if llm is None or self.dead:
            raise EngineUnavailable("the inference engine is not running")
        if not self._spec.lora.enabled:
            raise EngineRejected("LoRA adapters are not enabled ([lora] enabled = false)")
        # A fresh id each time: vLLM caches adapters by id, so a reload reads the new files.
        req = LoRARequest(lora_name=name, lora_int_id=next(self._lora_ids), lora_path=path)
        try:
            ok = await llm.add_lora(req)
        except EngineDeadError as exc:
            self._dead = True
            raise EngineUnavailable("the inference engine died") from exc
        except Exception as exc:  # the worker's error comes back as a plain Exception
            raise EngineRejected(f"vLLM cannot load the adapter: {exc}") from exc
        if not ok:
            raise EngineRejected("vLLM did not load the adapter")
        old = self._loras.get(name)
        self._loras[name] = req
        if old is not None:
            await llm.remove_lora(old.lora_int_id)

    async def remove_adapter(self, name: str) -> None:
        req = self._loras.pop(name, None)
        if req is not None and self._llm is not None:
            await self._llm.remove_lora(req.lora_int_id)

    async def encode_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        continue_final: bool = False,
    ) -> list[int]:
        tok = self._tokenizer

        def render() -> list[int]:
            text = tok.apply_chat_template(
                list(messages),
                tools=list(tools) if tools else None,
                add_generation_prompt=not continue_final,
                continue_final_message=continue_final,
                tokenize=False,
            )
            return list(tok.encode(text, add_special_tokens=False))

        return await asyncio.to_thread(render)

    async def encode_text(self, prompt: str) -> list[int]:
        tok = self._tokenizer
        return await asyncio.to_thread(lambda: list(tok.encode(prompt, add_special_tokens=True)))

    async def generate(
        self, prompt_ids: list[int], options: GenerationOptions, request_id: str, *, stream: bool
    ) -> AsyncGenerator[GenerationStep, None]:
        llm = self._llm
        if llm is None or self.dead:
            raise EngineUnavailable("the inference engine is not running")
        params = to_sampling_params(options, stream=stream)
        lora = None
        if options.adapter is not None:
            lora = self._loras.get(options.adapter)
            if lora is None:
                raise EngineRejected(f"model: no LoRA adapter named {options.adapter!r} is loaded")
        extras = {"cache_salt": options.cache_salt} if options.cache_salt else None
        (engine_input,) = llm.renderer.render_cmpl(
            [TokensPrompt(prompt_token_ids=prompt_ids)], prompt_extras=extras
        )
        want_logprobs = options.logprobs is not None
        gen = llm.generate(engine_input, params, request_id, lora_request=lora)
        finished = False
        try:
            async with contextlib.aclosing(gen):  # closing early makes vLLM abort the request
                async for out in gen:
                    finished = out.finished
                    choices = [
                        ChoiceDelta(
                            index=o.index,
                            text=o.text,
                            token_count=len(o.token_ids),
                            finish_reason=o.finish_reason,
                            token_ids=o.token_ids,
                            logprobs=_logprobs(o.token_ids, o.logprobs, options.logprobs or 0)
                            if want_logprobs
                            else [],
                        )
                        for o in out.outputs
                    ]
                    yield GenerationStep(
                        choices=choices,
                        prompt_tokens=len(out.prompt_token_ids or prompt_ids),
                        finished=out.finished,
                        cached_tokens=out.num_cached_tokens,
                    )
        except EngineDeadError as exc:
            self._dead = True
            raise EngineUnavailable("the inference engine died") from exc
        except GracefulHTTPError as exc:
            raise EngineUnavailable(exc.message) from exc
        except VLLMClientError as exc:
            raise _rejected(exc, options) from exc
        except ValueError as exc:  # vLLM validates a request's structured outputs this way
            if options.structured is None:
                raise
            raise _rejected(exc, options) from exc
        finally:
            if not finished:
                log.info("engine request aborted", extra={"request_id": request_id})


def _rejected(exc: Exception, options: GenerationOptions) -> EngineRejected:
    """vLLM refused the request: name the field, where it is the output constraint."""
    s = options.structured
    text = str(exc)
    if s is not None and any(
        w in text.lower() for w in ("grammar", "schema", "regex", "structured", "json", "choice")
    ):
        param = s.param.split(".")[0]
        return EngineRejected(f"{s.param}: the engine cannot use it: {text[:500]}", field=param)
    return EngineRejected(text)


def _logprobs(token_ids: Sequence[int], entries: object, top_k: int) -> list[TokenLogprob]:
    """vLLM's per-token {token_id: Logprob} dicts → tokens with their top alternatives."""
    if not entries:
        return []
    out: list[TokenLogprob] = []
    for tid, entry in zip(token_ids, entries, strict=False):  # type: ignore[call-overload]
        chosen = entry.get(tid)
        ranked = sorted(
            (lp for lp in entry.values() if lp.rank is not None and lp.rank <= top_k),
            key=lambda lp: lp.rank,
        )
        out.append(
            TokenLogprob(
                token=(chosen.decoded_token or "") if chosen else "",
                logprob=float(chosen.logprob) if chosen else float("-inf"),
                top=tuple((lp.decoded_token or "", float(lp.logprob)) for lp in ranked),
            )
        )
    return out

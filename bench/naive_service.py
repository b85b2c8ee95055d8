"""The original design's sample service, for comparison only (never shipped in deepseekd/).

A FastAPI app whose handler calls transformers ``generate`` once per request, as the design
sketched it: no batching across requests, no KV-cache reuse, no queue. It keeps the original
``POST /chat {"prompt"}`` and, so the same load generator can measure it, a minimal
``POST /v1/chat/completions`` (streamed with ``TextIteratorStreamer`` like the transformers
docs show).

    python bench/naive_service.py --model DIR --port 8103
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any, Iterator

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer


def build_app(model_dir: str) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    model.eval()
    app = FastAPI()

    def encode(messages: list[dict[str, str]]) -> torch.Tensor:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids

    def gen_kwargs(body: dict[str, Any]) -> dict[str, Any]:
        max_new = int(body.get("max_tokens") or 256)
        kw: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": False,
                              "pad_token_id": tokenizer.eos_token_id}
        if body.get("ignore_eos"):
            kw["min_new_tokens"] = max_new
        return kw

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/chat")
    def chat(body: dict[str, Any]) -> dict[str, str]:
        ids = encode([{"role": "user", "content": body["prompt"]}])
        with torch.inference_mode():
            out = model.generate(ids, **gen_kwargs(body))
        return {"response": tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)}

    @app.post("/v1/chat/completions")
    def chat_completions(body: dict[str, Any]) -> Any:
        ids = encode(body["messages"])
        kw = gen_kwargs(body)
        rid = "chatcmpl-" + uuid.uuid4().hex
        if not body.get("stream"):
            with torch.inference_mode():
                out = model.generate(ids, **kw)
            new = out[0, ids.shape[1]:]
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": int(time.time()),
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant",
                                         "content": tokenizer.decode(new, skip_special_tokens=True)}}],
                "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": int(new.shape[0]),
                          "total_tokens": ids.shape[1] + int(new.shape[0])}})

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def run() -> None:
            with torch.inference_mode():
                result["out"] = model.generate(ids, streamer=streamer, **kw)

        thread = threading.Thread(target=run)
        thread.start()

        def events() -> Iterator[str]:
            for text in streamer:
                if text:
                    chunk = {"id": rid, "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {"content": text},
                                          "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
            thread.join()
            n = int(result["out"].shape[1] - ids.shape[1])
            usage = {"id": rid, "object": "chat.completion.chunk", "choices": [],
                     "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": n,
                               "total_tokens": ids.shape[1] + n}}
            yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8103)
    args = p.parse_args()
    uvicorn.run(build_app(args.model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

"""The naive baseline: a model behind Ray Serve the way a first tutorial serves one.

One replica runs Hugging Face `transformers` `generate()` on one request at a time
(`max_ongoing_requests=1`): no batching, no streaming (a streamed request gets the whole answer in
one chunk once it is done), no cache, no prefix reuse. It speaks just enough of the OpenAI chat API
for the peer benchmark (bench/peers.py): `/v1/models`, `/v1/chat/completions` with `max_tokens`
(or `max_completion_tokens`),
`temperature`, `ignore_eos`, `stream` and `stream_options.include_usage`.

    serve run bench.naive_server:build model_path=/path/to/model served_model_name=tiny-llama
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

app = FastAPI()


@serve.deployment(max_ongoing_requests=1, ray_actor_options={"num_cpus": 1})
@serve.ingress(app)
class NaiveLLM:
    def __init__(self, model_path: str, served_model_name: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)  # one request at a time on one core, like the engine's replica
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32).eval()
        self.name = served_model_name

    @app.get("/v1/models")
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "naive"}]}

    @app.post("/v1/chat/completions")
    def chat(self, body: dict):
        import torch

        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        ids = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt")
        if not isinstance(ids, torch.Tensor):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        temperature = float(body.get("temperature", 1.0))
        kwargs = {"max_new_tokens": max_tokens, "do_sample": temperature > 0,
                  "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}
        if temperature > 0:
            kwargs["temperature"] = temperature
        if body.get("ignore_eos"):
            kwargs["min_new_tokens"] = max_tokens
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        new = out[0, ids.shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        usage = {"prompt_tokens": int(ids.shape[1]), "completion_tokens": int(new.shape[0]),
                 "total_tokens": int(ids.shape[1] + new.shape[0])}
        rid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
        if not body.get("stream"):
            return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": self.name,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "length" if len(new) >= max_tokens else "stop"}],
                                 "usage": usage})
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.name,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
        events = [chunk]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk, "choices": [], "usage": usage})
        payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return StreamingResponse(iter([payload]), media_type="text/event-stream")


def build(args: dict) -> serve.Application:
    return NaiveLLM.bind(args["model_path"], args.get("served_model_name", "model"))

"""Can the embedded model call tools? Measures tool choice under JSON-schema-constrained output.

The model answers each caller line with JSON that llama.cpp's grammar forces into one of:
{"tool": <a tool's name>, "arguments": <that tool's parameters>} or {"tool": "none", "say": ...}
(mode `choice`), or into a tool call only (mode `forced`: can it at least tell tools apart?).
It prints, per line, the tool wanted, what came out and how long it took, then the share right.

Measured on 2 cores with the packaged SmolLM2-135M-Instruct Q4_1, temperature 0: `choice` 2/8
(it answers "none" to everything, so only the two lines that need no tool are right), `forced`
0/6 with degenerate arguments ("taket_message_message_..."); 0.2-56 s per line. Hence
EmbeddedLLM.supports_tools = False. Run with --model to measure another GGUF.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/embedded_tools.py [--model FILE] [--mode forced]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from voiceai.engines.llm import EMBEDDED_CONTEXT, EMBEDDED_THREADS, resolve_gguf

TOOLS: list[dict[str, Any]] = [
    {
        "name": "transfer_to_person",
        "description": "Transfer the caller to a human receptionist when they ask for a person.",
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string"}},
            "required": ["reason"],
        },
    },
    {
        "name": "end_call",
        "description": "Say goodbye and hang up when the caller is done.",
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string"}},
            "required": ["reason"],
        },
    },
    {
        "name": "take_message",
        "description": "Take a message for someone who is not available.",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "callback_number": {"type": "string"},
                "message": {"type": "string"},
            },
            "required": ["name", "callback_number", "message"],
        },
    },
]
LINES: list[tuple[str, str | None]] = [  # what the caller says, the tool a receptionist would use
    ("Can I speak to a person?", "transfer_to_person"),
    ("I'd like to talk to a real human, please.", "transfer_to_person"),
    ("Please tell John to call me back at 555 0100.", "take_message"),
    ("This is Anna, for Dr. Smith: I need to reschedule, I'm on 555 2233.", "take_message"),
    ("Thanks, that's all. Goodbye!", "end_call"),
    ("Bye!", "end_call"),
    ("When do you open tomorrow?", None),
    ("Do you take credit cards?", None),
]


def schema(mode: str) -> dict[str, Any]:
    calls = [
        {
            "type": "object",
            "properties": {"tool": {"const": t["name"]}, "arguments": t["parameters"]},
            "required": ["tool", "arguments"],
        }
        for t in TOOLS
    ]
    if mode == "choice":
        say = {"tool": {"const": "none"}, "say": {"type": "string"}}
        calls.append({"type": "object", "properties": say, "required": ["tool", "say"]})
    return {"anyOf": calls}


def system_prompt() -> str:
    listing = "\n".join(
        f"- {t['name']}({', '.join(t['parameters']['properties'])}): {t['description']}"
        for t in TOOLS
    )
    return (
        "You are a friendly phone receptionist. Be brief.\n"
        f"You can use these tools:\n{listing}\n"
        'Answer in JSON: {"tool": "<tool name>", "arguments": {...}} to use a tool, '
        'or {"tool": "none", "say": "<your answer>"} to just answer.'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto", help="GGUF file (default: the packaged one)")
    parser.add_argument("--mode", choices=["choice", "forced"], default="choice")
    args = parser.parse_args()
    from llama_cpp import Llama

    path = resolve_gguf(args.model)
    model = Llama(
        model_path=str(path), n_ctx=EMBEDDED_CONTEXT, n_threads=EMBEDDED_THREADS, verbose=False
    )
    lines = [line for line in LINES if args.mode == "choice" or line[1] is not None]
    right = 0
    print(f"{path.name}, mode {args.mode}")
    for text, wanted in lines:
        started = time.perf_counter()
        out: Any = model.create_chat_completion(
            messages=[
                {"role": "system", "content": system_prompt()},
                {"role": "user", "content": text},
            ],
            response_format={"type": "json_object", "schema": schema(args.mode)},
            max_tokens=120,
            temperature=0.0,
        )
        raw = out["choices"][0]["message"]["content"]
        try:
            answer = json.loads(raw)
            tool = None if answer.get("tool") == "none" else answer.get("tool")
        except ValueError:  # cut off at max_tokens
            answer, tool = raw, "(unfinished JSON)"
        right += tool == wanted
        mark = "ok " if tool == wanted else "BAD"
        elapsed = time.perf_counter() - started
        print(f"{mark} {elapsed:5.1f} s  {text!r}: wanted {wanted}, got {str(answer)[:100]}")
    print(f"right tool: {right}/{len(lines)}")


if __name__ == "__main__":
    main()

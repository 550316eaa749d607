"""Chat and completion requests, from the checked request to the HTTP answer: the prompt
(with tools, a prefill, template options), the jobs (one per choice), and the reply as
one JSON answer or as server-sent events in OpenAI's shapes."""

from __future__ import annotations

import dataclasses

from ..errors import UsageError
from ..llama.job import Job
from . import api, shapes
from .chat_api import chat_request
from .reply import Reply, open_marker


@dataclasses.dataclass
class Prepared:
    """A chat request made ready to run: its jobs (one per choice) and the replies that
    read their text (reasoning, content, tool calls). Every chat dialect (OpenAI's chat,
    Anthropic's Messages, OpenAI's Responses) goes through here and differs only in shapes."""

    req: api.GenRequest
    prompt: str
    tokens: list
    jobs: list
    replies: list


def chat(app, h, body: dict) -> None:
    w = app.ready()
    p = prepare_chat(app, w, chat_request(body, app.defaults, app.default_max, max_n=w.n_slots))
    _answer(app, h, p.req, p.jobs, p.replies, "chatcmpl", "chat.completion")


def prepare_chat(app, w, req: api.GenRequest) -> Prepared:
    """The prompt (tools, a prefill, template options), its tokens, the jobs and replies."""
    formatter, msgs = w.formatter, req.messages
    tool_format, grammar, triggers, renders_tools = None, req.grammar, (), False
    if req.tools or any(m.get("tool_calls") or m["role"] == "tool" for m in msgs):
        from ..llama import toolcalls

        renders_tools = toolcalls.template_renders_tools(formatter.template)
        tool_format = toolcalls.format_for(formatter.template if renders_tools else None)
        msgs = toolcalls.prepare_messages(tool_format, msgs, req.tools, template_renders_tools=renders_tools)
        if req.tools:
            try:
                grammar, lazy = toolcalls.tool_choice_grammar(tool_format, req.tools, req.tool_choice,
                                                             req.parallel_tool_calls)  # fmt: skip
            except ValueError as e:
                raise api.ApiError(400, str(e), param="tools") from None
            triggers = tuple(tool_format.trigger_patterns()) if lazy else ()
        else:
            tool_format = None
    prefill = ""
    if msgs[-1]["role"] == "assistant" and not msgs[-1].get("tool_calls") and len(msgs) > 1:
        prefill, msgs = msgs[-1]["content"], msgs[:-1]  # continue this answer, not a new turn
    try:
        prompt = formatter.render(msgs, tools=req.tools if renders_tools else None, extra=req.template_kwargs)
    except UsageError as e:  # the template refused the conversation
        raise api.ApiError(400, str(e), param="messages") from None
    text = prompt.text + prefill
    tokens = app.tokens(w, text, prompt.add_special, "messages")
    split = req.reasoning_format != "none"
    open_close = open_marker(text) if split and not prefill else None
    replies = [Reply(split_reasoning=split, open_close=open_close, tool_format=tool_format)
               for _ in range(req.n)]  # fmt: skip
    special = tool_format is not None
    jobs = jobs_for(w, req, tokens, prompt.stop + req.stop, grammar, triggers, special=special)
    return Prepared(req, text, tokens, jobs, replies)


def completions(app, h, body: dict) -> None:
    w = app.ready()
    req = api.completion_request(body, app.defaults, app.default_max, max_n=w.n_slots)
    tokens = app.tokens(w, req.prompt, True, "prompt")
    jobs = jobs_for(w, req, tokens, req.stop, req.grammar, ())
    _answer(app, h, req, jobs, [None] * req.n, "cmpl", "text_completion")


def jobs_for(w, req, tokens, stop, grammar, triggers, special=False) -> list[Job]:
    room = w.engine.n_ctx - len(tokens)
    max_tokens = room if req.max_tokens < 0 else min(req.max_tokens, room)
    jobs = []
    for i in range(req.n):
        sampling = req.sampling
        if i and sampling.seed >= 0:  # n choices from one seed would all be the same answer
            sampling = dataclasses.replace(sampling, seed=(sampling.seed + i) & 0xFFFFFFFF)
        jobs.append(Job("generate", tokens, stop=stop, sampling=sampling, max_tokens=max_tokens,
                        stream=req.stream, grammar=grammar, grammar_triggers=triggers,
                        logprobs=req.logprobs, logit_bias=req.logit_bias, special=special))  # fmt: skip
    return jobs


def _answer(app, h, req, jobs, replies, prefix: str, kind: str) -> None:
    from .routes import ClientGone

    env = (shapes.new_id(prefix), app.model_id, app.fingerprint)
    try:
        if req.stream:
            _stream(app, h, req, jobs, replies, kind + (".chunk" if replies[0] else ""), env)
        else:
            _whole(app, h, req, jobs, replies, kind, env)
    except ClientGone:
        h.close_connection = True


def _whole(app, h, req, jobs, replies, kind, env) -> None:
    texts, probs = [[] for _ in jobs], [[] for _ in jobs]
    for i, event in app.run(h, jobs):
        if event[0] == "piece":
            texts[i].append(event[1])
            probs[i] += event[2]
    choices = []
    for i, (job, reply) in enumerate(zip(jobs, replies, strict=True)):
        text = "".join(texts[i])
        lp = probs[i] if req.logprobs is not None else None
        if reply is not None:
            reply.feed(text)
            reply.finish()
            message = reply.message()
            choice = {"index": i, "message": message, "logprobs": shapes.chat_logprobs(lp)}
        else:
            echo = req.prompt if req.echo else ""
            choice = {"index": i, "text": echo + text, "logprobs": shapes.completion_logprobs(lp, len(echo))}
        choice["finish_reason"] = shapes.finish(job.stats, bool(reply and reply.calls))
        choices.append(choice)
    h.send_json(200, shapes.envelope(kind, *env, choices=choices, usage=_usage(jobs),
                                     timings=shapes.timings(jobs[0].stats)))  # fmt: skip


def _usage(jobs) -> dict:
    out = shapes.usage(jobs[0].stats)
    out["completion_tokens"] = sum(j.stats.completion_tokens for j in jobs)
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["prompt_tokens_details"] = {"cached_tokens": jobs[0].stats.cached_tokens}
    return out


def _stream(app, h, req, jobs, replies, kind, env) -> None:
    chat = replies[0] is not None

    def chunk(i, delta=None, text=None, finish=None, logprobs=None, **extra):
        c = {"index": i, "logprobs": logprobs, "finish_reason": finish}
        c.update({"delta": delta or {}} if chat else {"text": text or ""})
        return shapes.envelope(kind, *env, choices=[c], **extra)

    events = app.run(h, jobs)
    first = next(events)  # an error before any output still gets a proper status code
    h.start_events()
    offsets = [len(req.prompt) if req.echo else 0 for _ in jobs]
    try:
        for i in range(len(jobs)):
            if chat:
                h.send_event(chunk(i, {"role": "assistant", "content": ""}))
            elif req.echo:
                h.send_event(chunk(i, text=req.prompt))
        for i, event in _chain(first, events):
            if event[0] != "piece":
                if event[0] == "done":
                    _end(h, req, jobs[i], replies[i], i, chunk)
                continue
            text, probs = event[1], event[2] if req.logprobs is not None else None
            if chat:
                deltas = replies[i].feed(text)
                for k, delta in enumerate(deltas or ([{}] if probs else [])):
                    lp = shapes.chat_logprobs(probs) if k == 0 and probs else None
                    h.send_event(chunk(i, delta, logprobs=lp))
            elif text or probs:
                h.send_event(chunk(i, text=text, logprobs=shapes.completion_logprobs(probs, offsets[i])))
                offsets[i] += len(text)
        if req.include_usage:
            h.send_event(shapes.envelope(kind, *env, choices=[], usage=_usage(jobs),
                                         timings=shapes.timings(jobs[0].stats)))  # fmt: skip
        h.send_event("[DONE]")
    except api.ApiError as e:
        h.send_event(e.body())
    except api.CLIENT_GONE:
        for job in jobs:
            job.cancelled.set()
    finally:
        events.close()


def _end(h, req, job, reply, i, chunk) -> None:
    """A choice is done: what its reply still held back, then its finish reason."""
    if reply is not None:
        for delta in reply.finish():
            h.send_event(chunk(i, delta))
    finish = shapes.finish(job.stats, bool(reply and reply.calls))
    h.send_event(chunk(i, finish=finish, timings=shapes.timings(job.stats)))


def _chain(first, rest):
    yield first
    yield from rest

"""Structured output, log-probabilities, choices, prefill and the fields the server refuses,
through the official openai client against a real SmolLM2 bundle; and the executable's
-p as a chat turn, --raw, --json-schema and --grammar."""

from __future__ import annotations

import json
import math

import jsonschema
import openai
import pytest

from conftest import assert_one_line_error, run_exe

pytestmark = pytest.mark.e2e

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person."}]


@pytest.fixture(scope="module")
def smol(chat_served):
    return chat_served


@pytest.fixture(scope="module")
def client(smol):
    return openai.OpenAI(base_url=smol.url + "/v1", api_key="unused", max_retries=0)


def _schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_a_json_schema_answer_parses_and_validates(client, temperature):
    r = client.chat.completions.create(
        model="smol",
        messages=ASK,
        temperature=temperature,
        seed=3,
        max_tokens=200,
        response_format=_schema_format(PERSON),
    )
    assert r.choices[0].finish_reason == "stop", r
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_a_streamed_json_schema_answer_validates(client):
    chunks = client.chat.completions.create(
        model="smol",
        messages=ASK,
        temperature=0,
        max_tokens=200,
        response_format=_schema_format(PERSON),
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_mode_answers_an_object(client):
    r = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Any JSON, short."}],
        temperature=0,
        max_tokens=300,
        response_format={"type": "json_object"},
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut by max_tokens: still the start of an object
        assert r.choices[0].message.content.lstrip().startswith("{")


def test_llama_server_json_schema_and_grammar_fields_on_completions(smol):
    import urllib.request

    def post(body):
        req = urllib.request.Request(
            smol.url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)["choices"][0]["text"]

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    jsonschema.validate(
        json.loads(post({"prompt": "JSON:", "json_schema": schema, "temperature": 0, "max_tokens": 50})),
        schema,
    )
    assert post({"prompt": "Is water wet?", "grammar": 'root ::= "yes" | "no"', "max_tokens": 5}) in (
        "yes",
        "no",
    )


@pytest.mark.parametrize(
    "fields, param, needle",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "objekt"}},
                }
            },
            "response_format",
            "the JSON schema cannot be used",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format", "response_format"),
        ({"grammar": 'root ::= "yes'}, None, "not valid GBNF"),
        ({"json_schema": {"type": "object"}, "grammar": 'root ::= "a"'}, "grammar", "do not go together"),
        ({"top_logprobs": 3}, "top_logprobs", "needs 'logprobs'"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
        ({"n": 99}, "n", "between 1 and"),
        ({"audio": {"voice": "alloy"}}, "audio", "not supported"),
        ({"suffix": "x"}, "suffix", "not supported"),
    ],
)
def test_what_the_server_cannot_honour_is_a_400_naming_it(client, fields, param, needle):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smol", messages=ASK, max_tokens=5, extra_body=fields)
    err = info.value.body
    assert needle in err["message"] and err.get("param") == param, err


def test_hints_are_accepted_and_any_model_name_answers(client):
    r = client.chat.completions.create(
        model="gpt-4o", messages=ASK, max_tokens=3, user="u1", store=False, metadata={"k": "v"}
    )
    assert r.model != "gpt-4o" and r.choices[0].message.content


def test_logprobs_are_consistent_with_the_chosen_tokens(client):
    r = client.chat.completions.create(
        model="smol", messages=ASK, temperature=0, max_tokens=8, logprobs=True, top_logprobs=5
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 8
    assert "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        tops = e.top_logprobs
        assert len(tops) == 5 and tops == sorted(tops, key=lambda t: -t.logprob)
        assert tops[0].token == e.token and math.isclose(tops[0].logprob, e.logprob)  # greedy: the best
        assert e.logprob <= 0 and sum(math.exp(t.logprob) for t in tops) <= 1.0 + 1e-6
        assert bytes(e.bytes).decode() == e.token


def test_streamed_logprobs_cover_every_token(client):
    chunks = list(
        client.chat.completions.create(
            model="smol",
            messages=ASK,
            temperature=0,
            max_tokens=8,
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
    )
    entries = [
        e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(entries) == 8 and "".join(e.token for e in entries) == text


def test_logit_bias_bans_a_token(client):
    first = client.chat.completions.create(
        model="smol", messages=ASK, temperature=0, max_tokens=1, logprobs=True
    )
    banned = first.choices[0].logprobs.content[0]
    again = client.chat.completions.create(
        model="smol",
        messages=ASK,
        temperature=0,
        max_tokens=1,
        logprobs=True,
        logit_bias={str(_token_id(client, banned.token)): -100},
    )
    assert again.choices[0].logprobs.content[0].token != banned.token


def _token_id(client, text: str) -> int:
    import urllib.request

    base = str(client.base_url).removesuffix("/v1/")
    req = urllib.request.Request(
        base + "/tokenize", json.dumps({"content": text}).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        (token,) = json.load(r)["tokens"]
    return token


def test_n_choices_each_come_back(client):
    r = client.chat.completions.create(
        model="smol", messages=ASK, temperature=1.2, seed=5, max_tokens=12, n=3
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1  # different seeds, different answers


def test_a_conversation_ending_with_an_assistant_message_is_continued(client):
    start = "The three primary colours are"
    r = client.chat.completions.create(
        model="smol",
        temperature=0,
        max_tokens=10,
        messages=[
            {"role": "user", "content": "Name the primary colours."},
            {"role": "assistant", "content": start},
        ],
    )
    fresh = client.chat.completions.create(
        model="smol",
        temperature=0,
        max_tokens=10,
        messages=[{"role": "user", "content": "Name the primary colours."}],
    )
    reply = r.choices[0].message.content
    assert not reply.startswith(start) and reply != fresh.choices[0].message.content


# -- the executable ------------------------------------------------------------------
def test_p_answers_as_a_chat_turn_and_raw_continues_the_text(chat_bundle, client):
    """-p on a chat model is one chat turn: the same answer the server gives the same message."""
    question = "What is 2+2?"
    chat = run_exe(chat_bundle, "-p", question, "--temp", "0", "-n", "20")
    raw = run_exe(chat_bundle, "-p", question, "--raw", "--temp", "0", "-n", "20")
    assert chat.returncode == 0 and raw.returncode == 0, (chat.stderr, raw.stderr)
    served = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=20
    )
    assert chat.stdout == served.choices[0].message.content + "\n"
    assert "4" in chat.stdout and "<|im_" not in chat.stdout
    assert raw.stdout != chat.stdout


def test_p_with_a_json_schema_file_answers_valid_json(chat_bundle, tmp_path):
    (tmp_path / "person.json").write_text(json.dumps(PERSON))
    proc = run_exe(
        chat_bundle, "-p", "A person.", "--json-schema", str(tmp_path / "person.json"), "--temp", "0"
    )
    assert proc.returncode == 0, proc.stderr
    jsonschema.validate(json.loads(proc.stdout), PERSON)


def test_p_with_a_grammar_file(chat_bundle, tmp_path):
    (tmp_path / "yn.gbnf").write_text('root ::= "yes" | "no"\n')
    proc = run_exe(chat_bundle, "-p", "Is the sky blue?", "--grammar", str(tmp_path / "yn.gbnf"))
    assert proc.returncode == 0 and proc.stdout.strip() in ("yes", "no"), proc


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--json-schema", '{"type": "objekt"}'], "the JSON schema cannot be used"),
        (["--json-schema", "{not json"], "--json-schema: not valid JSON"),
        (["--json-schema", "/no/such.json"], "--json-schema: cannot read /no/such.json"),
        (["--grammar", "/no/such.gbnf"], "--grammar: cannot read /no/such.gbnf"),
        (["--json-schema", "{}", "--grammar", "/x"], "do not go together"),
    ],
)
def test_bad_schemas_and_grammars_are_one_line(chat_bundle, args, needle):
    proc = run_exe(chat_bundle, "-p", "x", *args)
    assert proc.returncode == 2
    assert_one_line_error(proc, needle)


def test_an_invalid_grammar_file_is_one_line(chat_bundle, tmp_path):
    (tmp_path / "bad.gbnf").write_text('root ::= "yes\n')
    proc = run_exe(chat_bundle, "-p", "x", "--grammar", str(tmp_path / "bad.gbnf"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "the grammar is not valid GBNF: unexpected end of input")


def test_thinking_comes_back_as_reasoning_content(client):
    """A reply that opens with <think> (forced here by a grammar: SmolLM2 does not reason)
    is split into reasoning_content and content, streamed and not; "none" keeps it inline."""
    grammar = 'root ::= "<think>" [a-z ]{3,30} "</think>" [a-z ]{3,30}'
    ask = dict(model="smol", messages=ASK, temperature=0, max_tokens=60, extra_body={"grammar": grammar})
    msg = client.chat.completions.create(**ask).choices[0].message
    reasoning = msg.model_extra["reasoning_content"]
    assert reasoning and msg.content and "<think>" not in msg.content + reasoning
    deltas = [c.choices[0].delta for c in client.chat.completions.create(**ask, stream=True) if c.choices]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == reasoning
    assert "".join(d.content or "" for d in deltas) == msg.content
    ask["extra_body"] = {"grammar": grammar, "reasoning_format": "none"}
    inline = client.chat.completions.create(**ask).choices[0].message
    head, tail = inline.content.split("</think>", 1)
    assert head == f"<think>{reasoning}" and tail.lstrip() == msg.content  # split: blank space after it goes


def test_n_streamed_choices_each_come_back(client):
    texts: dict[int, str] = {}
    stream = client.chat.completions.create(
        model="smol", messages=ASK, temperature=1.0, seed=1, max_tokens=8, n=2, stream=True
    )
    for c in stream:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(texts) == [0, 1] and all(texts.values())


def test_completions_logprobs_in_the_legacy_shape(client):
    r = client.completions.create(
        model="smol", prompt="Once upon a time", temperature=0, max_tokens=5, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == 5
    assert all(
        len(top) == 2 and max(top.values()) >= lp.token_logprobs[i] - 1e-6
        for i, top in enumerate(lp.top_logprobs)
    )
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]


def test_cli_with_a_json_schema_answers_each_turn_in_json(chat_bundle):
    schema = json.dumps(
        {
            "type": "object",
            "properties": {"answer": {"type": "string", "maxLength": 40}},
            "required": ["answer"],
        }
    )
    proc = run_exe(chat_bundle, "--cli", "--json-schema", schema, "--temp", "0", input="Hi\nWhat is 2+2?\n")
    assert proc.returncode == 0, proc.stderr
    replies = [line.removeprefix("> ") for line in proc.stdout.splitlines() if line.strip("> ")]
    assert len(replies) == 2 and all(isinstance(json.loads(r)["answer"], str) for r in replies), proc.stdout

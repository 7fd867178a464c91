#!/usr/bin/env python3
"""What an OpenAI client sends, through the official `openai` Python client, against a running
frontend (argv: base URL, model): chat and completions, unary and streamed, with logprobs and
top_logprobs, n choices, best_of, echo, batch prompts, chat_template_kwargs (through
extra_body), and the errors the client raises for values out of range. Exits non-zero, naming the check, when one fails. Run by
tests/tests/e2e/openai_client.rs."""

import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="unused")
failures = []


def check(what, ok):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


msgs = [{"role": "user", "content": "Name three colours."}]

# Chat, unary, with logprobs: one entry per completion token, greedy = top alternative.
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0,
                                   logprobs=True, top_logprobs=4,
                                   extra_body={"ignore_eos": True})
content = r.choices[0].logprobs.content
check("chat: an entry per completion token", len(content) == r.usage.completion_tokens)
check("chat: four alternatives each", all(len(e.top_logprobs) == 4 for e in content))
check("chat: the greedy token is its best alternative",
      all(e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob
          for e in content))
check("chat: tokens spell the message",
      "".join(e.token for e in content) == r.choices[0].message.content)
check("chat: bytes are the token's", all(bytes(e.bytes).decode() == e.token for e in content))

# Chat, streamed: the same entries across chunks.
s = client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0,
                                   logprobs=True, top_logprobs=4, stream=True,
                                   extra_body={"ignore_eos": True})
streamed = [e for ch in s for c in ch.choices if c.logprobs and c.logprobs.content
            for e in c.logprobs.content]
check("chat stream: the unary entries",
      [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content])

# Completions with logprobs, unary and streamed.
c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6,
                              temperature=0, logprobs=3, extra_body={"ignore_eos": True})
lp = c.choices[0].logprobs
check("completions: tokens spell the text", "".join(lp.tokens) == c.choices[0].text)
check("completions: offsets start at 0 and advance",
      lp.text_offset[0] == 0 and all(b > a for a, b in zip(lp.text_offset, lp.text_offset[1:])))
check("completions: each top map has the sampled token",
      all(t in top and abs(top[t] - l) < 1e-6
          for t, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)))
s = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6,
                              temperature=0, logprobs=3, stream=True,
                              extra_body={"ignore_eos": True})
toks = [t for ch in s for ch_c in ch.choices if ch_c.logprobs for t in ch_c.logprobs.tokens]
check("completions stream: the unary tokens", toks == lp.tokens)

# No logprobs asked: none returned.
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=2)
check("chat: no logprobs unless asked", r.choices[0].logprobs is None)

# chat_template_kwargs through extra_body reach the template (accepted).
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=2,
                                   extra_body={"chat_template_kwargs": {"enable_thinking": False}})
check("chat_template_kwargs accepted", r.choices[0].finish_reason in ("length", "stop"))

# n choices: indexed, streamed by index, the prompt counted once.
r1 = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0.8,
                                    seed=5, extra_body={"ignore_eos": True})
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0.8,
                                   seed=5, n=3, extra_body={"ignore_eos": True})
check("chat n=3: three choices indexed 0..2", [c.index for c in r.choices] == [0, 1, 2])
check("chat n=3: usage counts the prompt once and every choice",
      r.usage.prompt_tokens == r1.usage.prompt_tokens and r.usage.completion_tokens == 12)
s = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0.8,
                                   seed=5, n=3, stream=True, extra_body={"ignore_eos": True})
joined = {}
for ch in s:
    for c in ch.choices:
        joined[c.index] = joined.get(c.index, "") + (c.delta.content or "")
check("chat n=3 stream: per index, the unary texts",
      [joined.get(i) for i in range(3)] == [c.message.content for c in r.choices])

# best_of, echo and batch prompts on completions.
c = client.completions.create(model=model, prompt="The sea is", max_tokens=4, temperature=1.0,
                              seed=2, n=1, best_of=3, extra_body={"ignore_eos": True})
check("completions best_of=3 n=1: one choice, three counted",
      len(c.choices) == 1 and c.usage.completion_tokens == 12)
c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=3,
                              temperature=0, echo=True, logprobs=1,
                              extra_body={"ignore_eos": True})
lp = c.choices[0].logprobs
check("completions echo: the prompt starts the text",
      c.choices[0].text.startswith("The capital of France is"))
check("completions echo: prompt tokens lead the logprobs, the first null",
      lp.token_logprobs[0] is None and len(lp.tokens) == c.usage.prompt_tokens + 3
      and "".join(lp.tokens) == c.choices[0].text)
c = client.completions.create(model=model, prompt=["One, two,", "Red, green,"], max_tokens=3,
                              temperature=0, n=2)
check("completions batch: a choice per prompt times n, prompt by prompt",
      [x.index for x in c.choices] == [0, 1, 2, 3]
      and c.choices[0].text == c.choices[1].text and c.choices[2].text == c.choices[3].text)

# Out of range: the client raises BadRequestError naming the field.
for what, kwargs in [("top_logprobs 21", dict(logprobs=True, top_logprobs=21)),
                     ("n 0", dict(n=0)), ("n 129", dict(n=129))]:
    try:
        client.chat.completions.create(model=model, messages=msgs, max_tokens=2, **kwargs)
        check(what + " refused", False)
    except openai.BadRequestError as e:
        field = what.split()[0]
        check(what + " refused naming " + field, field in str(e))
try:
    client.completions.create(model=model, prompt="x", max_tokens=2, logprobs=6)
    check("completions logprobs 6 refused", False)
except openai.BadRequestError as e:
    check("completions logprobs 6 refused naming logprobs", "logprobs" in str(e))

sys.exit(1 if failures else 0)

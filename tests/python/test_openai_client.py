"""Ferry as the official `openai` Python client sees it."""
import openai
import pytest

from conftest import MODEL

MSG = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_list(client):
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_non_streaming(client):
    r = client.chat.completions.create(model=MODEL, messages=MSG, temperature=0, max_tokens=24)
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(model=MODEL, messages=MSG, temperature=0, max_tokens=24)
    assert again.choices[0].message.content == c.message.content


def test_chat_streaming_equals_non_streaming(client):
    full = client.chat.completions.create(model=MODEL, messages=MSG, temperature=0, max_tokens=24)
    stream = client.chat.completions.create(
        model=MODEL, messages=MSG, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                text += ch.delta.content
            if ch.finish_reason:
                finish = ch.finish_reason
    assert text == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens


def test_n_choices_with_seed(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a joke."}],
        n=3, seed=7, temperature=1.0, max_tokens=12,
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    r2 = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a joke."}],
        n=3, seed=7, temperature=1.0, max_tokens=12,
    )
    assert [c.message.content for c in r.choices] == [c.message.content for c in r2.choices]


def test_stop_strings(client):
    full = client.chat.completions.create(model=MODEL, messages=MSG, temperature=0, max_tokens=30)
    text = full.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    r = client.chat.completions.create(model=MODEL, messages=MSG, temperature=0, max_tokens=30, stop=[stop])
    assert r.choices[0].message.content == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    # Streaming too: the stop string never appears, even split across tokens.
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in client.chat.completions.create(
            model=MODEL, messages=MSG, temperature=0, max_tokens=30, stop=[stop], stream=True
        )
        if ch.choices
    )
    assert streamed == text[: text.index(stop)]


def test_completions_and_echo(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.choices[0].text
    e = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=0, echo=True, logprobs=1)
    assert e.choices[0].text == "Once upon a time"
    assert e.choices[0].logprobs.token_logprobs[0] is None
    assert all(lp < 0 for lp in e.choices[0].logprobs.token_logprobs[1:])


def test_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MSG)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSG, temperature=7)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=100000)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSG, tools=[{"type": "function", "function": {"name": "f"}}])
    assert e.value.body["param"] == "tools"


def test_embeddings_float_and_base64_agree(client):
    import array
    import base64

    from conftest import EMBED_MODEL

    texts = ["The quick brown fox.", "Un café, s'il vous plaît.", "我爱自然语言处理"]
    f = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert f.object == "list" and f.model == EMBED_MODEL
    assert [d.index for d in f.data] == [0, 1, 2]
    assert all(len(d.embedding) == 384 for d in f.data)
    assert f.usage.prompt_tokens == f.usage.total_tokens > 3
    b = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="base64")
    for x, y in zip(f.data, b.data):
        if isinstance(y.embedding, str):  # older clients hand back the raw string
            y_vec = array.array("f", base64.b64decode(y.embedding)).tolist()
        else:
            y_vec = y.embedding
        assert len(y_vec) == 384
        assert max(abs(p - q) for p, q in zip(x.embedding, y_vec)) < 1e-6
    # The client's default (base64 on the wire, decoded by the client) gives the same vectors.
    d = client.embeddings.create(model=EMBED_MODEL, input=texts[0])
    assert max(abs(p - q) for p, q in zip(f.data[0].embedding, d.data[0].embedding)) < 1e-6
    norm = sum(v * v for v in d.data[0].embedding)
    assert abs(norm - 1.0) < 1e-4


def test_embedding_errors(client):
    from conftest import EMBED_MODEL

    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=EMBED_MODEL, input="x", dimensions=64)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=EMBED_MODEL, input="word " * 600)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="x")
    assert e.value.body["param"] == "model"

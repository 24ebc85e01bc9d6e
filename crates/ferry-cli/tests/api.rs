//! The HTTP API end to end: the real `ferry serve`, the real default model, real sockets.

mod common;

use common::{chat, shared, start, MODEL};
use serde_json::{json, Value};

fn content(v: &Value, i: usize) -> String {
    v["choices"][i]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn health_ready_and_models() {
    let s = shared();
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(s.get("/ready").status, 200);
    let m = s.get("/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], MODEL);
    assert_eq!(m["data"][0]["state"], "loaded");
    let one = s.get(&format!("/v1/models/{MODEL}"));
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["max_model_len"], 8192);
    let missing = s.get("/v1/models/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error()["code"], "model_not_found");
    let route = s.get("/v2/whatever");
    assert_eq!(route.status, 404);
    route.error();
}

#[test]
fn chat_completion_greedy_is_deterministic_and_counts_usage() {
    let s = shared();
    let body = chat(
        "What is the capital of France?",
        json!({"temperature": 0, "max_tokens": 24}),
    );
    let a = s.post("/v1/chat/completions", &body);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = a.json();
    let b = s.post("/v1/chat/completions", &body).json();
    assert_eq!(content(&a, 0), content(&b, 0));
    assert!(!content(&a, 0).is_empty());
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    let fr = a["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(fr == "stop" || fr == "length");
    // Usage counts tokens exactly: compare with /tokenize of the same messages.
    let t = s
        .post(
            "/tokenize",
            &json!({"model": MODEL, "messages": body["messages"]}),
        )
        .json();
    assert_eq!(a["usage"]["prompt_tokens"], t["count"]);
    let ct = a["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&ct));
    if fr == "length" {
        assert_eq!(ct, 24);
    }
    assert_eq!(
        a["usage"]["total_tokens"].as_u64().unwrap(),
        t["count"].as_u64().unwrap() + ct
    );
}

#[test]
fn seeded_sampling_repeats_and_n_gives_n_choices() {
    let s = shared();
    let body = chat(
        "Tell me a story.",
        json!({"temperature": 1.0, "seed": 42, "max_tokens": 16, "n": 3}),
    );
    let a = s.post("/v1/chat/completions", &body).json();
    let b = s.post("/v1/chat/completions", &body).json();
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    for i in 0..3 {
        assert_eq!(a["choices"][i]["index"], i);
        assert_eq!(content(&a, i), content(&b, i));
    }
    assert!(
        content(&a, 0) != content(&a, 1) || content(&a, 1) != content(&a, 2),
        "choices should differ"
    );
}

#[test]
fn stop_strings_are_excluded_also_in_streams() {
    let s = shared();
    let base = chat(
        "Count from 1 to 20, separated by commas.",
        json!({"temperature": 0, "max_tokens": 60}),
    );
    let full = content(&s.post("/v1/chat/completions", &base).json(), 0);
    // Pick a stop string from the middle of the greedy output.
    let mid = full
        .char_indices()
        .nth(full.chars().count() / 2)
        .map(|(i, _)| i)
        .unwrap_or(0);
    let stop: String = full[mid..].chars().take(3).collect();
    assert!(!stop.is_empty());
    let cut = &full[..full.find(&stop).unwrap()];
    let mut body = base.clone();
    body["stop"] = json!([stop]);
    let r = s.post("/v1/chat/completions", &body).json();
    assert_eq!(content(&r, 0), cut);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    body["stream"] = json!(true);
    let st = s.post("/v1/chat/completions", &body);
    let mut text = String::new();
    let mut finish = None;
    for d in st.sse() {
        if d == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&d).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(text, cut);
    assert_eq!(finish.as_deref(), Some("stop"));
}

#[test]
fn streaming_matches_non_streaming_with_usage_chunk() {
    let s = shared();
    let mut body = chat(
        "Name three colors.",
        json!({"temperature": 0, "max_tokens": 20}),
    );
    let plain = s.post("/v1/chat/completions", &body).json();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let data = r.sse();
    assert_eq!(data.last().map(|s| s.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c["usage"].is_null());
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"], plain["usage"]);
    assert_eq!(text, content(&plain, 0));
}

#[test]
fn logprobs_and_top_logprobs() {
    let s = shared();
    let r = s
        .post(
            "/v1/chat/completions",
            &chat(
                "Hi",
                json!({"temperature": 0, "max_tokens": 5, "logprobs": true, "top_logprobs": 3}),
            ),
        )
        .json();
    let lp = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        lp.len() as u64,
        r["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for t in lp {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(t["token"], top[0]["token"]);
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }
}

#[test]
fn completions_echo_logprobs_with_zero_max_tokens() {
    let s = shared();
    let r = s.post("/v1/completions", &json!({"model": MODEL, "prompt": "The quick brown fox jumps", "max_tokens": 0, "echo": true, "logprobs": 2}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let c = &v["choices"][0];
    assert_eq!(c["text"], "The quick brown fox jumps");
    let lp = &c["logprobs"];
    let n = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    assert!(lp["token_logprobs"][0].is_null());
    for i in 1..n {
        assert!(lp["token_logprobs"][i].as_f64().unwrap() < 0.0);
        assert_eq!(lp["top_logprobs"][i].as_object().unwrap().len(), 2);
    }
    // Token-id prompts and lists of prompts.
    let ids = s
        .post(
            "/tokenize",
            &json!({"model": MODEL, "prompt": "Hello world"}),
        )
        .json()["tokens"]
        .clone();
    let r = s
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": [ids, ids], "max_tokens": 3, "temperature": 0}),
        )
        .json();
    assert_eq!(r["choices"].as_array().unwrap().len(), 2);
    assert_eq!(r["choices"][0]["text"], r["choices"][1]["text"]);
}

#[test]
fn tokenize_detokenize_roundtrip() {
    let s = shared();
    let t = s
        .post(
            "/tokenize",
            &json!({"model": MODEL, "prompt": "héllo wörld 你好 🎉"}),
        )
        .json();
    let d = s
        .post(
            "/detokenize",
            &json!({"model": MODEL, "tokens": t["tokens"]}),
        )
        .json();
    assert_eq!(d["prompt"], "héllo wörld 你好 🎉");
    let bad = s.post(
        "/detokenize",
        &json!({"model": MODEL, "tokens": [99999999]}),
    );
    assert_eq!(bad.status, 400);
}

#[test]
fn errors_have_openai_shape_and_name_the_param() {
    let s = shared();
    let cases = [
        (chat("x", json!({"temperature": 5})), 400, "temperature"),
        (chat("x", json!({"top_p": 0})), 400, "top_p"),
        (chat("x", json!({"n": 0})), 400, "n"),
        (chat("x", json!({"max_tokens": -1})), 400, "max_tokens"),
        (
            chat("x", json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            "stop",
        ),
        (
            chat("x", json!({"logit_bias": {"999999": 1}})),
            400,
            "logit_bias",
        ),
        (chat("x", json!({"top_logprobs": 3})), 400, "top_logprobs"),
        (
            chat("x", json!({"tools": [{"type": "function"}]})),
            400,
            "tools",
        ),
        (chat("x", json!({"temperature": "hot"})), 400, "temperature"),
        (json!({"model": MODEL}), 400, "messages"),
        (json!({"messages": []}), 400, "model"),
    ];
    for (body, status, param) in cases {
        let r = s.post("/v1/chat/completions", &body);
        assert_eq!(
            r.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error()["param"], param, "{body}");
    }
    let r = s.post(
        "/v1/chat/completions",
        &chat("x", json!({"model": "no-such-model"})),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.error()["code"], "model_not_found");
    let r = s.post_bytes("/v1/chat/completions", b"{not json");
    assert_eq!(r.status, 400);
    r.error();
    // Context overflow is refused, never truncated.
    let r = s.post(
        "/v1/chat/completions",
        &chat("hello", json!({"max_tokens": 9000})),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["code"], "context_length_exceeded");
    let long = "word ".repeat(9000);
    let r = s.post(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": long, "max_tokens": 1}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["code"], "context_length_exceeded");
    // Oversized body.
    let huge = vec![b' '; 5 << 20];
    let r = s.post_bytes("/v1/chat/completions", &huge);
    assert_eq!(r.status, 413);
    r.error();
}

#[test]
fn eight_concurrent_streams_complete_and_match_solo_greedy_runs() {
    let s = shared();
    let prompts: Vec<String> = (0..8)
        .map(|i| format!("Write one sentence about the number {i}."))
        .collect();
    let body = |p: &str| {
        chat(
            p,
            json!({"temperature": 0, "max_tokens": 32, "stream": true, "stream_options": {"include_usage": true}}),
        )
    };
    let run = |p: &str| -> (String, Value) {
        let r = s.post("/v1/chat/completions", &body(p));
        assert_eq!(r.status, 200);
        let mut text = String::new();
        let mut usage = Value::Null;
        let data = r.sse();
        assert_eq!(data.last().map(|d| d.as_str()), Some("[DONE]"));
        for d in &data[..data.len() - 1] {
            let v: Value = serde_json::from_str(d).unwrap();
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(c);
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
        }
        (text, usage)
    };
    let together: Vec<(String, Value)> = std::thread::scope(|sc| {
        prompts
            .iter()
            .map(|p| sc.spawn(move || run(p)))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    for (p, (text, usage)) in prompts.iter().zip(&together) {
        let solo = s
            .post(
                "/v1/chat/completions",
                &chat(p, json!({"temperature": 0, "max_tokens": 32})),
            )
            .json();
        assert_eq!(
            &content(&solo, 0),
            text,
            "batched greedy output differs from solo for {p:?}"
        );
        assert_eq!(usage, &solo["usage"]);
        assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    }
}

#[test]
fn full_queue_answers_429_with_retry_after() {
    let s = start(&["--max-running", "1", "--max-waiting", "1"]);
    let body = chat(
        "Write a long essay about the sea.",
        json!({"temperature": 0, "max_tokens": 200}),
    );
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let b = body.clone();
                let s = &s;
                sc.spawn(move || {
                    let r = s.post("/v1/chat/completions", &b);
                    (r.status, r.header("retry-after").map(|x| x.to_string()))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().any(|(st, _)| *st == 200), "{statuses:?}");
    let limited: Vec<_> = statuses.iter().filter(|(st, _)| *st == 429).collect();
    assert!(!limited.is_empty(), "{statuses:?}");
    assert!(limited.iter().all(|(_, ra)| ra.is_some()));
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    d / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn embeddings_shapes_formats_and_errors() {
    let dir = common::embed_dir();
    let s = start(&["--model", &dir]);
    let em = "all-MiniLM-L6-v2";
    let m = s.get("/v1/models").json();
    let ids: Vec<&str> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&em) && ids.contains(&MODEL), "{ids:?}");

    let r = s.post(
        "/v1/embeddings",
        &json!({"model": em, "input": ["A cat sits on the mat.", "A kitten is on the rug.", "Stock prices fell sharply."]}),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], em);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_eq!(d["embedding"].as_array().unwrap().len(), 384);
    }
    let e: Vec<Vec<f64>> = data.iter().map(|d| floats(&d["embedding"])).collect();
    assert!((cosine(&e[0], &e[0]) - 1.0).abs() < 1e-6);
    assert!(
        cosine(&e[0], &e[1]) > cosine(&e[0], &e[2]),
        "similar sentences are closer"
    );
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 6);
    assert_eq!(u["prompt_tokens"], u["total_tokens"]);

    // A single string, token ids (with the specials), and base64 agree with the list answer.
    let one = s.post(
        "/v1/embeddings",
        &json!({"model": em, "input": "A cat sits on the mat."}),
    );
    assert_eq!(floats(&one.json()["data"][0]["embedding"]), e[0]);
    let tok = s.post(
        "/v1/embeddings",
        &json!({"model": em, "input": [101, 1037, 4937, 7719, 2006, 1996, 13523, 1012, 102]}),
    );
    assert_eq!(tok.status, 200);
    assert_eq!(floats(&tok.json()["data"][0]["embedding"]), e[0]);
    let toks = s.post(
        "/v1/embeddings",
        &json!({"model": em, "input": [[101, 1037, 102], [101, 102]]}),
    );
    assert_eq!(toks.json()["data"].as_array().unwrap().len(), 2);
    let b64 = s.post(
        "/v1/embeddings",
        &json!({"model": em, "input": "A cat sits on the mat.", "encoding_format": "base64"}),
    );
    assert!(b64.json()["data"][0]["embedding"].is_string());

    // Errors.
    let err = |body: Value, status: u16, code: &str, param: &str| {
        let r = s.post("/v1/embeddings", &body);
        assert_eq!(r.status, status, "{body}");
        let e = r.error();
        assert_eq!(e["code"], code, "{body}");
        assert_eq!(e["param"], param, "{body}");
    };
    let long = "word ".repeat(600);
    err(
        json!({"model": em, "input": long}),
        400,
        "context_length_exceeded",
        "input",
    );
    err(
        json!({"model": em, "input": []}),
        400,
        "invalid_request",
        "input",
    );
    err(
        json!({"model": em, "input": ""}),
        400,
        "invalid_request",
        "input",
    );
    err(
        json!({"model": em, "input": "x", "dimensions": 128}),
        400,
        "unsupported_parameter",
        "dimensions",
    );
    err(
        json!({"model": em, "input": "x", "encoding_format": "int8"}),
        400,
        "invalid_request",
        "encoding_format",
    );
    err(
        json!({"model": em, "input": "x", "frobnicate": true}),
        400,
        "unsupported_parameter",
        "frobnicate",
    );
    err(
        json!({"model": em, "input": [[101, 999999]]}),
        400,
        "invalid_request",
        "input",
    );
    err(
        json!({"model": "nope", "input": "x"}),
        404,
        "model_not_found",
        "model",
    );
    err(
        json!({"model": MODEL, "input": "x"}),
        400,
        "invalid_request",
        "model",
    );
    let r = s.post("/v1/chat/completions", &chat("hi", json!({"model": em})));
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["param"], "model");
    let ok = s.post(
        "/v1/embeddings",
        &json!({"model": em, "input": long, "truncate": true}),
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["usage"]["prompt_tokens"], 512);

    // Concurrent clients are batched together and get their own answers.
    let texts: Vec<String> = (0..12)
        .map(|i| format!("Sentence number {i} about topic {}.", i % 3))
        .collect();
    let solo: Vec<Vec<f64>> = texts
        .iter()
        .map(|t| {
            floats(
                &s.post("/v1/embeddings", &json!({"model": em, "input": t}))
                    .json()["data"][0]["embedding"],
            )
        })
        .collect();
    std::thread::scope(|sc| {
        let hs: Vec<_> = texts
            .iter()
            .map(|t| {
                let s = &s;
                sc.spawn(move || {
                    floats(
                        &s.post("/v1/embeddings", &json!({"model": em, "input": t}))
                            .json()["data"][0]["embedding"],
                    )
                })
            })
            .collect();
        for (h, want) in hs.into_iter().zip(&solo) {
            assert_eq!(&h.join().unwrap(), want, "batch invariance over HTTP");
        }
    });
}

#[test]
fn pull_imports_a_model_directory() {
    let home = common::temp_home("pull-dir");
    let out = common::ferry(&home, &["pull", &common::embed_dir(), "--name", "minilm"]);
    assert!(out.contains("imported minilm"), "{out}");
    assert!(common::ferry(&home, &["list"]).contains("minilm"));
    let s = common::start_in(&home, &["--model", "minilm"]);
    let r = s.post(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": "hello"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["data"][0]["embedding"].as_array().unwrap().len(),
        384
    );
}

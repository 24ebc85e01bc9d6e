//! Many models in one server, end to end: every model registered in FERRY_HOME is served,
//! loads on first use, is unloaded least-recently-used under `--max-loaded-models`, and can be
//! loaded and unloaded through the admin routes; a model that fails to load stays `failed`
//! without disturbing the others. Real `ferry serve`, real models, loopback HTTP.

mod common;

use std::time::{Duration, Instant};

use common::{chat, ferry, start_in, temp_home, Server, MODEL};
use serde_json::{json, Value};

/// A data directory, removed when the test is done (declare it before the server, so the
/// server stops first).
struct Home(std::path::PathBuf);

impl std::ops::Deref for Home {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A data directory with the default GGUF imported under each of `gguf_names`, MiniLM as
/// `minilm` if asked, and `broken`: a well-formed GGUF without a tokenizer or weights (it
/// imports, since the file parses, but cannot load).
fn home_with(tag: &str, gguf_names: &[&str], minilm: bool, broken: bool) -> Home {
    let home = Home(temp_home(tag));
    let gguf = common::model_path();
    for n in gguf_names {
        ferry(&home, &["pull", gguf.to_str().unwrap(), "--name", n]);
    }
    if minilm {
        ferry(&home, &["pull", &common::embed_dir(), "--name", "minilm"]);
    }
    if broken {
        use ferry_models::gguf::{writer, Value as G};
        let bytes = writer::write(&[("general.architecture", G::String("llama".into()))], &[]);
        let p = home.join("broken.gguf");
        std::fs::write(&p, bytes).unwrap();
        ferry(&home, &["pull", p.to_str().unwrap(), "--name", "broken"]);
    }
    home
}

fn models(s: &Server) -> Vec<Value> {
    let r = s.get("/v1/models");
    assert_eq!(r.status, 200);
    r.json()["data"].as_array().unwrap().clone()
}

fn card(s: &Server, id: &str) -> Value {
    models(s)
        .into_iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed"))
}

fn state(s: &Server, id: &str) -> String {
    card(s, id)["state"].as_str().unwrap().to_string()
}

fn ask(s: &Server, model: &str) -> common::Response {
    s.post(
        "/v1/chat/completions",
        &chat(
            "Say hi.",
            json!({"model": model, "max_tokens": 2, "temperature": 0}),
        ),
    )
}

fn body(r: &common::Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn metrics(s: &Server) -> String {
    body(&s.get("/metrics"))
}

/// A field of /proc/PID/status (kB for sizes).
fn proc_status(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Threads of the process that belong to engines (`ferry-engine`, `ferry-embed`,
/// `ferry-compute-N`), not the runtime's.
fn engine_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        // Engine and pool threads; the training runner's thread is not an engine's.
        .filter(|c| c.starts_with("ferry-") && !c.starts_with("ferry-trainer"))
        .count()
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn registered_models_load_on_first_use_and_lru_unloads_under_max_loaded_models() {
    let home = home_with("lru", &["alpha"], true, false);
    let s = start_in(&home, &["--max-loaded-models", "1"]);
    // The `--model` one is loaded at start; registered ones wait for their first request.
    assert_eq!(state(&s, MODEL), "loaded");
    assert_eq!(state(&s, "alpha"), "available");
    assert_eq!(state(&s, "minilm"), "available");
    assert!(card(&s, "alpha").get("memory_bytes").is_none());

    let r = ask(&s, "alpha");
    assert_eq!(r.status, 200, "{}", body(&r));
    let a = card(&s, "alpha");
    assert_eq!(a["state"], "loaded");
    assert_eq!(a["max_model_len"], 8192);
    let file = std::fs::metadata(common::model_path()).unwrap().len();
    assert!(a["memory_bytes"].as_u64().unwrap() > file, "{a}");
    // Only one may be loaded: the least recently used went back to `available`.
    assert_eq!(state(&s, MODEL), "available");

    let r = s.post(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": ["one", "two", "three"]}),
    );
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(state(&s, "minilm"), "loaded");
    assert_eq!(state(&s, "alpha"), "available");

    // The evicted default model is loaded again by its next request.
    let r = ask(&s, MODEL);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(state(&s, MODEL), "loaded");
    assert_eq!(state(&s, "minilm"), "available");

    // Metrics: gauges only for the loaded model; counters of unloaded engines are kept.
    let m = metrics(&s);
    let l = |n: &str| format!("{{model_name=\"{n}\"}}");
    assert_eq!(
        metric(&m, &format!("ferry:model_loaded{}", l(MODEL))),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, &format!("ferry:model_loaded{}", l("alpha"))),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, &format!("ferry:model_loaded{}", l("minilm"))),
        Some(0.0)
    );
    for stale in ["alpha", "minilm"] {
        for g in [
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "ferry:model_memory_bytes",
        ] {
            assert!(
                metric(&m, &format!("{g}{}", l(stale))).is_none(),
                "{g} {stale}:\n{m}"
            );
        }
    }
    assert!(metric(&m, &format!("ferry:model_memory_bytes{}", l(MODEL))).unwrap() > 0.0);
    assert!(metric(&m, &format!("vllm:prompt_tokens_total{}", l("alpha"))).unwrap() > 0.0);
    assert_eq!(
        metric(&m, &format!("ferry:embedding_inputs_total{}", l("minilm"))),
        Some(3.0)
    );
    assert!(metric(&m, &format!("vllm:prompt_tokens_total{}", l("minilm"))).unwrap() >= 3.0);
    assert_eq!(
        metric(
            &m,
            &format!("vllm:e2e_request_latency_seconds_count{}", l("minilm"))
        ),
        Some(1.0)
    );
    // Two loads of the default model (start, and after its eviction), one of alpha.
    assert_eq!(
        metric(
            &m,
            &format!("ferry:model_load_duration_seconds_count{}", l(MODEL))
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!("ferry:model_load_duration_seconds_count{}", l("alpha"))
        ),
        Some(1.0)
    );

    // A model imported while the server runs is served without a restart.
    ferry(
        &home,
        &[
            "pull",
            common::model_path().to_str().unwrap(),
            "--name",
            "late",
        ],
    );
    let r = ask(&s, "late");
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(state(&s, "late"), "loaded");
}

#[test]
fn load_and_unload_routes_free_the_engine_and_a_broken_model_disturbs_nobody() {
    let home = home_with("routes", &["alpha"], false, true);
    let s = start_in(&home, &[]);
    let pid = s.pid();
    assert_eq!(state(&s, "alpha"), "available");
    let threads0 = engine_threads(pid);
    assert!(threads0 >= 1);

    let r = s.request("POST", "/v1/models/alpha/load", &[], None);
    assert_eq!(r.status, 200, "{}", body(&r));
    let c = r.json();
    assert_eq!(c["id"], "alpha");
    assert_eq!(c["state"], "loaded");
    assert!(c["memory_bytes"].as_u64().unwrap() > 0);
    // Loading again is a no-op.
    let r = s.request("POST", "/v1/models/alpha/load", &[], None);
    assert_eq!(
        (r.status, r.json()["state"].clone()),
        (200, json!("loaded"))
    );
    assert_eq!(ask(&s, "alpha").status, 200);
    let (threads1, vm1) = (engine_threads(pid), proc_status(pid, "VmSize"));
    assert_eq!(threads1, 2 * threads0, "two engines of the same shape");

    let r = s.request("POST", "/v1/models/alpha/unload", &[], None);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.json()["state"], "available");
    assert!(r.json().get("memory_bytes").is_none());
    // The engine is gone: its threads ended and its mapping and KV cache were released.
    let file_kb = std::fs::metadata(common::model_path()).unwrap().len() / 1024;
    assert_eq!(engine_threads(pid), threads0);
    let vm2 = proc_status(pid, "VmSize");
    assert!(vm1 - vm2.min(vm1) >= file_kb, "VmSize {vm1} kB -> {vm2} kB");
    // Unloading what is not loaded is a no-op 200; unknown models are 404.
    let r = s.request("POST", "/v1/models/alpha/unload", &[], None);
    assert_eq!(
        (r.status, r.json()["state"].clone()),
        (200, json!("available"))
    );
    for route in ["load", "unload"] {
        let r = s.request("POST", &format!("/v1/models/nope/{route}"), &[], None);
        assert_eq!(r.status, 404);
        assert_eq!(r.error()["code"], "model_not_found");
    }
    // Requests reload an unloaded model.
    assert_eq!(ask(&s, "alpha").status, 200);

    // The broken model: 503 with the loader's message, `failed` in the list, others unharmed.
    let r = ask(&s, "broken");
    assert_eq!(r.status, 503, "{}", body(&r));
    let e = r.error();
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("broken") && msg.contains("failed to load"),
        "{msg}"
    );
    assert!(msg.contains("tokenizer"), "the loader's reason: {msg}");
    let c = card(&s, "broken");
    assert_eq!(c["state"], "failed");
    assert!(c["error"].as_str().unwrap().contains("tokenizer"), "{c}");
    assert_eq!(ask(&s, MODEL).status, 200);
    assert_eq!(ask(&s, "alpha").status, 200);
    // Requests do not retry the load (the failure count stays at 1) ...
    assert_eq!(ask(&s, "broken").status, 503);
    let l = "{model_name=\"broken\"}";
    assert_eq!(
        metric(&metrics(&s), &format!("ferry:model_load_failures_total{l}")),
        Some(1.0)
    );
    // ... an explicit load does.
    let r = s.request("POST", "/v1/models/broken/load", &[], None);
    assert_eq!(r.status, 503, "{}", body(&r));
    assert_eq!(
        metric(&metrics(&s), &format!("ferry:model_load_failures_total{l}")),
        Some(2.0)
    );
    // Unloading a failed model clears it back to `available`.
    let r = s.request("POST", "/v1/models/broken/unload", &[], None);
    assert_eq!(
        (r.status, r.json()["state"].clone()),
        (200, json!("available"))
    );
}

#[test]
fn concurrent_first_requests_share_one_load() {
    let home = home_with("burst", &["alpha"], false, false);
    let s = start_in(&home, &[]);
    assert_eq!(state(&s, "alpha"), "available");
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|_| sc.spawn(|| ask(&s, "alpha").status))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses, vec![200; 8]);
    let m = metrics(&s);
    let l = "{model_name=\"alpha\"}";
    assert_eq!(
        metric(&m, &format!("ferry:model_load_duration_seconds_count{l}")),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn a_request_waits_at_most_the_load_timeout_then_gets_503_with_retry_after() {
    let home = home_with("timeout", &["alpha"], false, false);
    let s = start_in(&home, &["--load-timeout", "0"]);
    // No time to wait: the first request starts the load and is told to come back.
    let r = ask(&s, "alpha");
    assert_eq!(r.status, 503, "{}", body(&r));
    assert_eq!(r.error()["code"], "service_unavailable");
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&ra));
    // The load went on; once done, requests are answered.
    eventually("alpha to load", || state(&s, "alpha") == "loaded");
    assert_eq!(ask(&s, "alpha").status, 200);
}

#[test]
fn memory_budget_unloads_the_least_recently_used() {
    let home = home_with("budget", &["alpha"], false, false);
    // One model of this shape (weights + 8192-token f16 KV cache + workspace) is about 345 MB:
    // two do not fit in 500 MiB.
    let s = start_in(&home, &["--memory-budget", "500MiB"]);
    let one = card(&s, MODEL)["memory_bytes"].as_u64().unwrap();
    assert!(one < 500 << 20 && 2 * one > 500 << 20, "{one}");
    let r = ask(&s, "alpha");
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(state(&s, "alpha"), "loaded");
    assert_eq!(state(&s, MODEL), "available");
    let r = ask(&s, MODEL);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(state(&s, "alpha"), "available");
}

#[test]
fn a_model_with_requests_in_flight_is_not_unloaded_while_an_idle_one_can_be() {
    let home = home_with("busy", &["alpha", "beta"], false, false);
    let s = start_in(&home, &["--max-loaded-models", "2"]);
    // A long stream keeps the default model busy (end-of-text tokens banned: it cannot stop
    // early); then alpha is used, so the busy default model is the least recently used.
    let long = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4000,
                      "stream": true, "logit_bias": {"0": -100, "2": -100, "4": -100}});
    let mut st = s.open_stream("POST", "/v1/completions", &[], Some(&long));
    assert_eq!(st.status, 200);
    assert!(st.next_data().is_some());
    assert_eq!(ask(&s, "alpha").status, 200);
    // Loading beta needs room: the idle alpha goes, not the busy default model.
    assert_eq!(ask(&s, "beta").status, 200);
    assert_eq!(state(&s, MODEL), "loaded");
    assert_eq!(state(&s, "alpha"), "available");
    assert_eq!(state(&s, "beta"), "loaded");
    // The stream is still going.
    let d = st.next_data().expect("more of the stream");
    let v: Value = serde_json::from_str(&d).unwrap();
    assert!(v["choices"][0]["finish_reason"].is_null(), "{v}");
}

#[test]
fn a_model_larger_than_the_whole_budget_is_refused_before_it_is_read() {
    let home = home_with("toobig", &["alpha"], true, false);
    // Only the small embedding model is loaded at start; the chat model (about 345 MB with
    // its f16 KV cache) cannot fit in 300 MiB whatever is unloaded.
    let s = common::start_serving(Some(&home), &["minilm"], &["--memory-budget", "300MiB"]);
    let small = card(&s, "minilm")["memory_bytes"].as_u64().unwrap();
    assert!(small < 300 << 20, "{small}");
    let r = ask(&s, "alpha");
    assert_eq!(r.status, 503, "{}", body(&r));
    let msg = r.error()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("before loading") && msg.contains("--memory-budget 300.0 MiB"),
        "{msg}"
    );
    let c = card(&s, "alpha");
    assert_eq!(c["state"], "failed", "{c}");
    // Nothing was unloaded to make room for a model that could never fit.
    assert_eq!(state(&s, "minilm"), "loaded");
    let m = metrics(&s);
    assert_eq!(
        metric(&m, "ferry:model_load_failures_total{model_name=\"alpha\"}"),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn concurrent_loads_hold_room_so_the_budget_is_never_overshot() {
    let home = home_with("concurrent-budget", &["alpha", "beta"], false, false);
    // One chat model (about 345 MB) fits in 500 MiB, two do not.
    let s = start_in(&home, &["--memory-budget", "500MiB"]);
    let pid = s.pid();
    let one_engine = engine_threads(pid);
    assert!(one_engine >= 1);
    // Both loads start at once; each is estimated from its header before it is read, so the
    // second waits for the first instead of loading beside it.
    let peak = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (ra, rb) = std::thread::scope(|sc| {
        let watch = sc.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(engine_threads(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let a = sc.spawn(|| s.request("POST", "/v1/models/alpha/load", &[], None));
        let b = sc.spawn(|| s.request("POST", "/v1/models/beta/load", &[], None));
        let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        watch.join().unwrap();
        (ra, rb)
    });
    assert_eq!(ra.status, 200, "{}", body(&ra));
    assert_eq!(rb.status, 200, "{}", body(&rb));
    // Never two engines at once: each load first unloaded the model holding the room.
    let peak = peak.into_inner();
    assert!(
        peak < 2 * one_engine,
        "peak {peak} engine threads, one engine has {one_engine}"
    );
    let loaded: Vec<String> = models(&s)
        .into_iter()
        .filter(|m| m["state"] == "loaded")
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert!(loaded[0] == "alpha" || loaded[0] == "beta", "{loaded:?}");
    assert_eq!(state(&s, MODEL), "available");
}

/// `ferry config` failing: its stderr.
fn config_refused(home: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("config")
        .args(args)
        .env("FERRY_HOME", home)
        .output()
        .unwrap();
    assert!(!out.status.success(), "ferry config {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn each_model_runs_with_its_own_options_over_the_servers_flags() {
    let home = home_with("opts", &["small", "big"], true, false);
    // Refused, with the reason, and nothing stored.
    for (args, why) in [
        (
            &["small", "context_length=999999"][..],
            "own maximum of 8192",
        ),
        (&["small", "num_ctx=5"], "unknown model option"),
        (&["small", "threads=0"], "between 1 and"),
        (&["small", "context_length"], "KEY=VALUE"),
        (&["small", "max_running=two"], "not a whole number"),
        (&["minilm", "kv_cache_tokens=64"], "chat (GGUF) models only"),
        (&["minilm", "context_length=513"], "own maximum of 512"),
        (&["nosuch", "threads=1"], "nosuch"),
    ] {
        let err = config_refused(&home, args);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert!(ferry(&home, &["config", "small"]).contains("no options"));
    ferry(
        &home,
        &[
            "config",
            "small",
            "context_length=64",
            "kv-cache-tokens=256",
            "max_running=3",
            "threads=1",
        ],
    );
    let out = ferry(&home, &["config", "small", "--unset", "threads"]);
    assert!(
        out.contains("small: context_length=64 kv_cache_tokens=256 max_running=3"),
        "{out}"
    );
    ferry(&home, &["config", "minilm", "context_length=16"]);
    let shown = ferry(&home, &["show", "small"]);
    assert!(
        shown.contains("context_length=64 kv_cache_tokens=256 max_running=3"),
        "{shown}"
    );

    // The server's flags are the defaults; each model's options win over them.
    // (The test server runs with `--kv-cache-tokens 8192`.)
    let s = start_in(&home, &["--max-running", "5", "--context-length", "4096"]);
    assert_eq!(ask(&s, "small").status, 200);
    assert_eq!(ask(&s, "big").status, 200);
    let small = card(&s, "small");
    assert_eq!(small["max_model_len"], 64, "{small}");
    assert_eq!(small["engine"]["kv_cache_tokens"], 256, "{small}");
    assert_eq!(small["engine"]["max_running"], 3, "{small}");
    let big = card(&s, "big");
    assert_eq!(big["max_model_len"], 4096, "{big}");
    assert_eq!(big["engine"]["kv_cache_tokens"], 8192, "{big}");
    assert_eq!(big["engine"]["max_running"], 5, "{big}");
    // A smaller budget than the flags' is also what the memory estimate counts.
    assert!(
        small["memory_bytes"].as_u64().unwrap() < big["memory_bytes"].as_u64().unwrap(),
        "{small} {big}"
    );

    // The cap is enforced, never a silent cut: 60 completion tokens on top of the prompt fit
    // `big` but not `small`.
    let long = chat(
        "Say hi.",
        json!({"model": "small", "max_tokens": 60, "temperature": 0}),
    );
    let r = s.post("/v1/chat/completions", &long);
    assert_eq!(r.status, 400, "{}", body(&r));
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    assert!(
        body(&r).contains("maximum context length is 64 tokens"),
        "{}",
        body(&r)
    );
    let mut long = long;
    long["model"] = json!("big");
    long["max_tokens"] = json!(8);
    assert_eq!(s.post("/v1/chat/completions", &long).status, 200);

    // The embedding model's cap: 16 tokens with [CLS] and [SEP].
    let words =
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen";
    let r = s.post(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": words}),
    );
    assert_eq!(r.status, 400, "{}", body(&r));
    assert!(body(&r).contains("16"), "{}", body(&r));
    let r = s.post(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": "one two"}),
    );
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(card(&s, "minilm")["max_model_len"], 16);

    // The same through the admin route: a JSON merge patch, checked like the CLI's.
    let r = s.get("/v1/models/small/options");
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(
        r.json()["options"],
        json!({"context_length": 64, "kv_cache_tokens": 256, "max_running": 3})
    );
    for (id, patch, status, param) in [
        (
            "small",
            json!({"context_length": 99999}),
            400,
            "context_length",
        ),
        ("small", json!({"num_ctx": 5}), 400, "num_ctx"),
        ("small", json!({"max_running": -1}), 400, "max_running"),
        ("small", json!({"max_running": "2"}), 400, "max_running"),
        ("minilm", json!({"max_running": 2}), 400, "max_running"),
        ("nosuch", json!({"threads": 1}), 404, "model"),
        // A `--model` path has no registry row to keep options in.
        (MODEL, json!({"threads": 1}), 400, "model"),
    ] {
        let r = s.request(
            "PATCH",
            &format!("/v1/models/{id}/options"),
            &[],
            Some(&patch),
        );
        assert_eq!(r.status, status, "{id} {patch}: {}", body(&r));
        assert_eq!(
            r.json()["error"]["param"],
            param,
            "{id} {patch}: {}",
            body(&r)
        );
    }
    let r = s.request(
        "PATCH",
        "/v1/models/small/options",
        &[],
        Some(&json!({"max_running": 2, "context_length": null})),
    );
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(
        r.json()["options"],
        json!({"kv_cache_tokens": 256, "max_running": 2})
    );
    // A loaded model keeps its settings until it loads again.
    assert_eq!(card(&s, "small")["engine"]["max_running"], 3);
    assert_eq!(s.post("/v1/models/small/unload", &json!({})).status, 200);
    assert_eq!(ask(&s, "small").status, 200);
    let small = card(&s, "small");
    assert_eq!(small["engine"]["max_running"], 2, "{small}");
    assert_eq!(small["max_model_len"], 256, "{small}");
    assert!(ferry(&home, &["show", "small"]).contains("kv_cache_tokens=256 max_running=2"));
}

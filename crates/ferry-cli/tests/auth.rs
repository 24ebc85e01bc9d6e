//! API keys, scopes, rate limits, usage, metrics, request ids and graceful drain, against the
//! real `ferry serve` (keys made with the real `ferry keys` CLI in the server's FERRY_HOME).

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{chat, ferry, start_in, temp_home, Response, Server, MODEL};
use serde_json::{json, Value};

struct Fixture {
    server: Server,
    home: PathBuf,
    admin: String,
    inference: String,
    inference_id: String,
    revoked: String,
    revoked_id: String,
}

fn create_key(home: &std::path::Path, name: &str, scope: &str) -> Value {
    let out = ferry(
        home,
        &["keys", "create", "--name", name, "--scope", scope, "--json"],
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// One server whose keys were made with the CLI before it started.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let home = temp_home("auth");
        let admin = create_key(&home, "ops", "admin");
        let inference = create_key(&home, "app", "inference");
        let revoked = create_key(&home, "old", "inference");
        let revoked_id = revoked["id"].as_str().unwrap().to_string();
        assert!(ferry(&home, &["keys", "revoke", &revoked_id]).contains(&revoked_id));
        let list: Value = serde_json::from_str(&ferry(&home, &["keys", "list", "--json"])).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 3);
        assert!(list[2]["revoked"].is_u64());
        // A registered model besides the default, for the load/unload admin routes (the
        // default model stays loaded for the other tests).
        let gguf = common::model_path();
        ferry(&home, &["pull", gguf.to_str().unwrap(), "--name", "spare"]);
        let server = start_in(&home, &[]);
        let s = |v: &Value, k: &str| v[k].as_str().unwrap().to_string();
        Fixture {
            server,
            admin: s(&admin, "key"),
            inference: s(&inference, "key"),
            inference_id: s(&inference, "id"),
            revoked: s(&revoked, "key"),
            revoked_id,
            home,
        }
    })
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn body_of(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// (route template, methods) of every `.route(...)` in the server's router.
fn router_routes() -> Vec<(String, Vec<String>)> {
    let src = include_str!("../../ferry-server/src/lib.rs");
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find(".route(\"") {
        rest = &rest[i + 8..];
        let end = rest.find('"').unwrap();
        let path = rest[..end].to_string();
        // The handler expression: up to the `)` closing `.route(`.
        let mut depth = 1;
        let mut j = 0;
        for (k, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        j = k;
                        break;
                    }
                }
                _ => {}
            }
        }
        let expr = &rest[end..j];
        let mut methods = Vec::new();
        for m in ["get", "post", "put", "patch", "delete"] {
            let pat = format!("{m}(");
            let hit = expr.match_indices(&pat).any(|(k, _)| {
                k == 0 || {
                    let b = expr.as_bytes()[k - 1];
                    !(b.is_ascii_alphanumeric() || b == b'_')
                }
            });
            if hit {
                methods.push(m.to_uppercase());
            }
        }
        assert!(!methods.is_empty(), "no method found for route {path}");
        out.push((path, methods));
    }
    assert!(out.len() >= 10, "router parse found only {out:?}");
    out
}

#[test]
fn every_route_against_every_kind_of_key() {
    let f = fixture();
    let s = &f.server;
    let bad = "ferry-0000000000000000000000000000000000000000000000000000000000000000";
    let creds: [(&str, Option<&str>); 5] = [
        ("none", None),
        ("bad", Some(bad)),
        ("revoked", Some(&f.revoked)),
        ("inference", Some(&f.inference)),
        ("admin", Some(&f.admin)),
    ];
    let routes = router_routes();
    for want in [
        "/health",
        "/ready",
        "/metrics",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/admin/keys",
        "/v1/models/{id}/load",
        "/v1/models/{id}/unload",
    ] {
        assert!(routes.iter().any(|(p, _)| p == want), "{want} not found");
    }
    for (template, methods) in &routes {
        let path = match template.as_str() {
            "/v1/models/{id}" => format!("/v1/models/{MODEL}"),
            "/v1/models/{id}/load" => "/v1/models/spare/load".to_string(),
            "/v1/models/{id}/unload" => "/v1/models/spare/unload".to_string(),
            // Revoking is idempotent: the already revoked key is a safe target.
            "/v1/admin/keys/{id}" => format!("/v1/admin/keys/{}", f.revoked_id),
            "/v1/admin/keys/{id}/usage" => format!("/v1/admin/keys/{}/usage", f.inference_id),
            t => {
                // Any other parameter: a placeholder value.
                let mut p = String::new();
                let mut in_param = false;
                for c in t.chars() {
                    match c {
                        '{' => {
                            in_param = true;
                            p.push('x');
                        }
                        '}' => in_param = false,
                        c if !in_param => p.push(c),
                        _ => {}
                    }
                }
                p
            }
        };
        for method in methods {
            let body = (method == "POST").then(|| match template.as_str() {
                "/v1/chat/completions" => chat("hi", json!({"max_tokens": 1})),
                "/v1/completions" => json!({"model": MODEL, "prompt": "hi", "max_tokens": 1}),
                "/v1/embeddings" => json!({"model": MODEL, "input": "hi"}),
                "/tokenize" => json!({"model": MODEL, "prompt": "hi"}),
                "/detokenize" => json!({"model": MODEL, "tokens": [1, 2]}),
                "/v1/admin/keys" => json!({"name": "walk"}),
                _ => json!({}),
            });
            // The success status where this test knows the route; others only need to get
            // past authentication (any status but 401/403).
            let success: Option<u16> = match (method.as_str(), template.as_str()) {
                ("POST", "/v1/admin/keys") => Some(201),
                (_, "/v1/embeddings") => None,
                // The lifecycle service (inference scope): lists answer 200; a JSON body is no
                // upload and `{}` no job or prediction (400); the placeholder id `x` is unknown.
                ("GET", "/v1/files" | "/v1/training/jobs" | "/v1/training/models") => Some(200),
                ("POST", "/v1/files" | "/v1/training/jobs" | "/v1/predictions") => Some(400),
                (_, t) if t.starts_with("/v1/files/") || t.starts_with("/v1/training/jobs/") => {
                    Some(404)
                }
                (_, t) if routes_known().contains(&t) => Some(200),
                _ => None,
            };
            let open = matches!(template.as_str(), "/health" | "/ready");
            let admin_only = template.starts_with("/v1/admin")
                || template.ends_with("/load")
                || template.ends_with("/unload")
                || template.ends_with("/options");
            for (who, key) in creds {
                let auth = key.map(bearer);
                let headers: Vec<(&str, &str)> = auth
                    .as_deref()
                    .map(|a| vec![("Authorization", a)])
                    .unwrap_or_default();
                let r = s.request(method, &path, &headers, body.as_ref());
                let ctx = format!("{method} {path} as {who}: {} {}", r.status, body_of(&r));
                assert!(r.header("x-request-id").is_some(), "{ctx}");
                let expect_denied = |status: u16, code: &str| {
                    assert_eq!(r.status, status, "{ctx}");
                    assert_eq!(r.error()["code"], code, "{ctx}");
                };
                match (open, who) {
                    (true, _) => assert_eq!(r.status, 200, "{ctx}"),
                    (false, "none" | "bad" | "revoked") => {
                        expect_denied(401, "invalid_api_key");
                        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{ctx}");
                    }
                    (false, "inference") if admin_only => expect_denied(403, "permission_denied"),
                    _ => match success {
                        Some(st) => assert_eq!(r.status, st, "{ctx}"),
                        None => assert!(![401, 403].contains(&r.status), "{ctx}"),
                    },
                }
            }
        }
    }
    // Unknown routes need a key too (no probing without one), then 404.
    let r = s.get("/v1/nothing-here");
    assert_eq!(r.status, 401);
    let r = s.get_with_headers(
        "/v1/nothing-here",
        &[("Authorization", &bearer(&f.inference))],
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.error()["code"], "not_found");
}

/// Routes whose success status (200 for the sample request) the walk asserts exactly.
fn routes_known() -> [&'static str; 11] {
    [
        "/v1/models",
        "/v1/models/{id}",
        "/v1/models/{id}/load",
        "/v1/models/{id}/unload",
        "/v1/chat/completions",
        "/v1/completions",
        "/tokenize",
        "/detokenize",
        "/metrics",
        "/v1/admin/keys",
        "/v1/admin/keys/{id}/usage",
    ]
}

#[test]
fn admin_routes_create_list_and_revoke() {
    let f = fixture();
    let s = &f.server;
    let admin = bearer(&f.admin);
    let h = [("Authorization", admin.as_str())];
    let r = s.post_with_headers(
        "/v1/admin/keys",
        &json!({"name": "short-lived", "scope": "inference", "rpm": 100}),
        &h,
    );
    assert_eq!(r.status, 201, "{}", body_of(&r));
    let k = r.json();
    let key = k["key"].as_str().unwrap().to_string();
    let id = k["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("ferry-"));
    assert_eq!(k["scope"], "inference");
    assert_eq!(k["rpm"], 100);
    // Usable at once.
    let kh = bearer(&key);
    assert_eq!(
        s.get_with_headers("/v1/models", &[("Authorization", &kh)])
            .status,
        200
    );
    // Listed without secrets.
    let list = s.get_with_headers("/v1/admin/keys", &h);
    assert_eq!(list.status, 200);
    let text = body_of(&list);
    assert!(!text.contains(&key[6..]) && !text.contains("hash"));
    assert!(list.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == id.as_str()));
    // Revoked: refused at once.
    let r = s.request("DELETE", &format!("/v1/admin/keys/{id}"), &h, None);
    assert_eq!(r.status, 200);
    assert!(r.json()["revoked"].is_u64());
    let r = s.get_with_headers("/v1/models", &[("Authorization", &kh)]);
    assert_eq!(r.status, 401);
    assert!(r.error()["message"].as_str().unwrap().contains("revoked"));
    // Bad input and unknown ids.
    for (body, param) in [
        (json!({}), "name"),
        (json!({"name": "x", "scope": "root"}), "scope"),
        (json!({"name": "x", "rpm": 0}), "rpm"),
        (json!({"name": "x", "tpm": -5}), "tpm"),
        (json!({"name": "x", "colour": "red"}), "colour"),
    ] {
        let r = s.post_with_headers("/v1/admin/keys", &body, &h);
        assert_eq!(r.status, 400, "{body}: {}", body_of(&r));
        assert_eq!(r.error()["param"], param);
    }
    let r = s.request("DELETE", "/v1/admin/keys/key_nope", &h, None);
    assert_eq!(r.status, 404);
    assert_eq!(
        s.get_with_headers("/v1/admin/keys/key_nope/usage", &h)
            .status,
        404
    );
}

fn make_key(f: &Fixture, body: Value) -> (String, String) {
    let r = f.server.post_with_headers(
        "/v1/admin/keys",
        &body,
        &[("Authorization", &bearer(&f.admin))],
    );
    assert_eq!(r.status, 201, "{}", body_of(&r));
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

#[test]
fn rpm_limit_answers_429_with_retry_after() {
    let f = fixture();
    let (_, key) = make_key(f, json!({"name": "rpm2", "rpm": 2}));
    let h = bearer(&key);
    let h = [("Authorization", h.as_str())];
    assert_eq!(f.server.get_with_headers("/v1/models", &h).status, 200);
    assert_eq!(f.server.get_with_headers("/v1/models", &h).status, 200);
    let r = f.server.get_with_headers("/v1/models", &h);
    assert_eq!(r.status, 429, "{}", body_of(&r));
    assert_eq!(r.error()["code"], "rate_limit_exceeded");
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&ra), "{ra}");
    // Other keys are not affected.
    let other = bearer(&f.inference);
    assert_eq!(
        f.server
            .get_with_headers("/v1/models", &[("Authorization", &other)])
            .status,
        200
    );
}

#[test]
fn tpm_limit_counts_tokens_of_finished_requests() {
    let f = fixture();
    let (_, key) = make_key(f, json!({"name": "tpm30", "tpm": 30}));
    let h = bearer(&key);
    let h = [("Authorization", h.as_str())];
    let long = "word ".repeat(40);
    let body = json!({"model": MODEL, "prompt": long, "max_tokens": 1, "temperature": 0});
    let r = f.server.post_with_headers("/v1/completions", &body, &h);
    assert_eq!(r.status, 200, "{}", body_of(&r));
    assert!(r.json()["usage"]["total_tokens"].as_u64().unwrap() >= 30);
    // Tokens are counted when a request finishes: the next one waits.
    let r = f.server.post_with_headers("/v1/completions", &body, &h);
    assert_eq!(r.status, 429, "{}", body_of(&r));
    assert_eq!(r.error()["code"], "rate_limit_exceeded");
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&ra), "{ra}");
}

#[test]
fn usage_is_recorded_per_key_and_readable_by_admin_route_and_cli() {
    let f = fixture();
    let (id, key) = make_key(f, json!({"name": "metered"}));
    let h = bearer(&key);
    let h = [("Authorization", h.as_str())];
    let (mut prompt, mut completion) = (0, 0);
    for q in ["Say hi.", "Name a color."] {
        let r = f.server.post_with_headers(
            "/v1/chat/completions",
            &chat(q, json!({"max_tokens": 3, "temperature": 0})),
            &h,
        );
        assert_eq!(r.status, 200, "{}", body_of(&r));
        let u = &r.json()["usage"];
        prompt += u["prompt_tokens"].as_u64().unwrap();
        completion += u["completion_tokens"].as_u64().unwrap();
    }
    // A stream, with its usage chunk, and n = 2 (the prompt counts once).
    let r = f.server.post_with_headers(
        "/v1/chat/completions",
        &chat(
            "Count to three.",
            json!({"max_tokens": 4, "stream": true, "n": 2, "stream_options": {"include_usage": true}}),
        ),
        &h,
    );
    assert_eq!(r.status, 200);
    let data = r.sse();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    prompt += last["usage"]["prompt_tokens"].as_u64().unwrap();
    completion += last["usage"]["completion_tokens"].as_u64().unwrap();

    let admin = bearer(&f.admin);
    let u = f
        .server
        .get_with_headers(
            &format!("/v1/admin/keys/{id}/usage"),
            &[("Authorization", &admin)],
        )
        .json();
    assert_eq!(u["key_id"], id.as_str());
    assert_eq!(u["total"]["requests"], 3, "{u}");
    assert_eq!(u["total"]["prompt_tokens"], prompt, "{u}");
    assert_eq!(u["total"]["completion_tokens"], completion, "{u}");
    assert_eq!(u["data"][0]["model"], MODEL);

    // The admin route flushed the batch, so the CLI reads the same from the database.
    let rows: Value =
        serde_json::from_str(&ferry(&f.home, &["keys", "usage", &id, "--json"])).unwrap();
    let sum = |k: &str| -> u64 {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r[k].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("requests"), 3);
    assert_eq!(sum("prompt_tokens"), prompt);
    assert_eq!(sum("completion_tokens"), completion);
    let table = ferry(&f.home, &["keys", "usage", &id]);
    assert!(table.contains(MODEL), "{table}");
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_expose_vllm_histograms_gauges_and_http_counters() {
    let f = fixture();
    let s = &f.server;
    let h = bearer(&f.inference);
    let h = [("Authorization", h.as_str())];
    let r = s.post_with_headers(
        "/v1/chat/completions",
        &chat("Hello!", json!({"max_tokens": 4, "stream": true})),
        &h,
    );
    assert_eq!(r.status, 200);
    let r = s.post_with_headers(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "One, two,", "max_tokens": 3}),
        &h,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        s.get_with_headers(&format!("/v1/models/{MODEL}"), &h)
            .status,
        200
    );
    let m = s.get_with_headers("/metrics", &h);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = body_of(&m);
    let label = format!("{{model_name=\"{MODEL}\"}}");
    for h in [
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {h} histogram")), "{h}");
        let n = metric(&text, &format!("{h}_count{label}")).unwrap_or_else(|| panic!("{h}"));
        assert!(n >= 1.0, "{h}_count = {n}");
        let inf = metric(
            &text,
            &format!("{h}_bucket{{model_name=\"{MODEL}\",le=\"+Inf\"}}"),
        );
        assert_eq!(inf, Some(n), "{h}");
    }
    for g in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ] {
        assert!(text.contains(&format!("# TYPE {g} gauge")), "{g}");
        let v = metric(&text, &format!("{g}{label}")).unwrap_or_else(|| panic!("{g}"));
        assert!(v >= 0.0);
    }
    for c in ["vllm:prompt_tokens_total", "vllm:generation_tokens_total"] {
        assert!(metric(&text, &format!("{c}{label}")).unwrap() > 0.0, "{c}");
    }
    let ok = metric(
        &text,
        "ferry_http_requests_total{route=\"/v1/chat/completions\",method=\"POST\",status=\"200\"}",
    );
    assert!(ok.unwrap_or(0.0) >= 1.0, "{text}");
    // Route templates, never raw paths.
    assert!(text.contains("route=\"/v1/models/{id}\""));
    assert!(!text.contains(&format!("route=\"/v1/models/{MODEL}\"")));
    assert!(
        metric(
            &text,
            "ferry_http_request_duration_seconds_count{route=\"/v1/chat/completions\"}"
        )
        .unwrap()
            >= 1.0
    );
}

#[test]
fn request_ids_are_echoed_or_generated() {
    let f = fixture();
    let s = &f.server;
    let r = s.get_with_headers("/health", &[("X-Request-Id", "abc-123.x")]);
    assert_eq!(r.header("x-request-id"), Some("abc-123.x"));
    // Also on refusals.
    let r = s.get_with_headers("/v1/models", &[("x-request-id", "trace:42")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-request-id"), Some("trace:42"));
    // Not plain: replaced.
    let r = s.get_with_headers("/health", &[("X-Request-Id", "a b<script>")]);
    let id = r.header("x-request-id").unwrap();
    assert!(!id.is_empty() && !id.contains(' '));
    let a = s.get("/health");
    let b = s.get("/health");
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
}

#[test]
fn require_auth_then_sigterm_drains_streams_and_exits_zero() {
    let home = temp_home("drain");
    let mut s = start_in(&home, &["--require-auth", "--drain-timeout", "120"]);
    // No keys yet: everything but health and readiness is refused.
    assert_eq!(s.get("/v1/models").status, 401);
    assert_eq!(s.get("/health").status, 200);
    // A key made with the CLI while the server runs works within a second or so.
    let key = create_key(&home, "late", "inference")["key"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = bearer(&key);
    let h = [("Authorization", auth.as_str())];
    let t = Instant::now();
    while s.get_with_headers("/v1/models", &h).status != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "new key not picked up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let body = json!({"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 150,
                      "temperature": 0, "stream": true});
    let mut st = s.open_stream("POST", "/v1/completions", &h, Some(&body));
    assert_eq!(st.status, 200);
    let first = st.next_data().expect("first chunk");
    assert!(first.starts_with('{'), "{first}");

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // New requests are refused while the stream goes on.
    let t = Instant::now();
    let refused = loop {
        let r = s.get_with_headers("/v1/models", &h);
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(10), "never refused");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(refused.error()["code"], "service_unavailable");
    assert!(refused.header("retry-after").is_some());

    let mut data = vec![first];
    while let Some(d) = st.next_data() {
        data.push(d);
    }
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let finish: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(
        finish["choices"][0]["finish_reason"].is_string(),
        "{finish}"
    );
    let status = s
        .wait_exit(Duration::from_secs(30))
        .expect("server did not exit after the drain");
    assert!(status.success(), "{status:?}");
}

#[test]
fn embeddings_count_against_the_key() {
    let home = temp_home("embed-usage");
    let admin = create_key(&home, "ops", "admin");
    let user = create_key(&home, "emb", "inference");
    let s = start_in(&home, &["--model", &common::embed_dir()]);
    let h = bearer(user["key"].as_str().unwrap());
    let r = s.post_with_headers(
        "/v1/embeddings",
        &json!({"model": "all-MiniLM-L6-v2", "input": ["hello world", "good morning"]}),
        &[("Authorization", h.as_str())],
    );
    assert_eq!(r.status, 200, "{}", body_of(&r));
    let tokens = r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 0);
    let ha = bearer(admin["key"].as_str().unwrap());
    let id = user["id"].as_str().unwrap();
    let u = s
        .get_with_headers(
            &format!("/v1/admin/keys/{id}/usage"),
            &[("Authorization", ha.as_str())],
        )
        .json();
    assert_eq!(u["total"]["requests"], 1, "{u}");
    assert_eq!(u["total"]["prompt_tokens"], tokens, "{u}");
    assert_eq!(u["total"]["completion_tokens"], 0, "{u}");
}

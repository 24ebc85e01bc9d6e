//! `ferry show`, `ferry rm`, `ferry ps`: looking at and removing registered models, and asking
//! a running server what it has loaded.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ferry_store::ModelRecord;
use serde_json::Value;

use crate::store;

fn mb(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GB", b as f64 / 1e9)
    } else {
        format!("{:.1} MB", b as f64 / 1e6)
    }
}

/// 135M, 1.2B, ...
pub fn human_count(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1}B", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.0}M", n as f64 / 1e6)
    } else if n >= 1000 {
        format!("{:.0}K", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// llama.cpp's `llama_ftype` names (`general.file_type`).
pub fn file_type_name(t: u64) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        _ => return None,
    })
}

/// `(key, value)` lines describing a model's contents.
fn describe_gguf(path: &Path) -> Result<Vec<(String, String)>> {
    let f = ferry_models::gguf::GgufFile::open(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let s = |k: &str| f.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let u = |k: &str| f.get(k).and_then(|v| v.as_u64());
    let arch = s("general.architecture").unwrap_or_else(|| "unknown".into());
    out.push(("architecture".into(), arch.clone()));
    if let Some(n) = s("general.name") {
        out.push(("name".into(), n));
    }
    let params: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
    out.push((
        "parameters".into(),
        format!("{} ({params})", human_count(params)),
    ));
    // Quantization: the file type the converter recorded, and the tensor types by bytes.
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for t in f.tensors() {
        *by_type.entry(format!("{:?}", t.ty)).or_default() += t.n_bytes as u64;
    }
    let mut types: Vec<(String, u64)> = by_type.into_iter().collect();
    types.sort_by_key(|t| std::cmp::Reverse(t.1));
    let mix = types
        .iter()
        .map(|(t, b)| format!("{t} {}", mb(*b)))
        .collect::<Vec<_>>()
        .join(", ");
    let q = match u("general.file_type").and_then(file_type_name) {
        Some(n) => format!("{n} (tensors: {mix})"),
        None => format!("tensors: {mix}"),
    };
    out.push(("quantization".into(), q));
    if let Some(c) = u(&format!("{arch}.context_length")) {
        out.push(("context length".into(), c.to_string()));
    }
    if let Some(e) = u(&format!("{arch}.embedding_length")) {
        out.push(("embedding length".into(), e.to_string()));
    }
    if let Some(b) = u(&format!("{arch}.block_count")) {
        out.push(("layers".into(), b.to_string()));
    }
    if let Some(h) = u(&format!("{arch}.attention.head_count")) {
        let kv = u(&format!("{arch}.attention.head_count_kv")).unwrap_or(h);
        out.push(("attention heads".into(), format!("{h} (kv {kv})")));
    }
    if let Some(v) = f
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|a| a.len())
    {
        out.push(("vocabulary".into(), v.to_string()));
    }
    match s("tokenizer.chat_template") {
        Some(t) => {
            let first = t.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let first: String = first.chars().take(80).collect();
            out.push((
                "chat template".into(),
                format!("yes, {} bytes; first line: {first}", t.len()),
            ));
        }
        None => out.push(("chat template".into(), "none".into())),
    }
    if let Some(l) = s("general.license") {
        out.push(("license".into(), l));
    }
    Ok(out)
}

fn describe_dir(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json")).context("reading config.json")?,
    )
    .context("parsing config.json")?;
    let arch = cfg
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .or_else(|| cfg.get("model_type").and_then(Value::as_str))
        .unwrap_or("unknown");
    out.push(("architecture".into(), arch.to_string()));
    let st = ferry_models::safetensors::SafetensorsFile::open(&dir.join("model.safetensors"))
        .map_err(|e| anyhow!("reading model.safetensors: {e}"))?;
    let params: u64 = st.tensors().map(|t| t.n_elements() as u64).sum();
    out.push((
        "parameters".into(),
        format!("{} ({params})", human_count(params)),
    ));
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for t in st.tensors() {
        *dtypes.entry(format!("{:?}", t.dtype)).or_default() += 1;
    }
    let d = dtypes
        .iter()
        .map(|(k, n)| format!("{k} ({n} tensors)"))
        .collect::<Vec<_>>()
        .join(", ");
    out.push(("quantization".into(), format!("none: {d}")));
    if let Some(c) = cfg.get("max_position_embeddings").and_then(Value::as_u64) {
        out.push(("context length".into(), c.to_string()));
    }
    if let Some(h) = cfg.get("hidden_size").and_then(Value::as_u64) {
        out.push(("embedding length".into(), h.to_string()));
    }
    if let Some(l) = cfg.get("num_hidden_layers").and_then(Value::as_u64) {
        out.push(("layers".into(), l.to_string()));
    }
    if let Ok(p) = std::fs::read_to_string(dir.join("1_Pooling/config.json")) {
        if let Ok(v) = serde_json::from_str::<Value>(&p) {
            let modes: Vec<&str> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| k.starts_with("pooling_mode_") && v.as_bool() == Some(true))
                .map(|(k, _)| k.trim_start_matches("pooling_mode_"))
                .collect();
            out.push(("pooling".into(), modes.join(", ")));
        }
    }
    out.push(("chat template".into(), "none (embedding model)".into()));
    Ok(out)
}

pub fn show(name: &str) -> Result<()> {
    let rec: ModelRecord = store::record(name)?;
    let path = store::model_path(&rec)?;
    println!("{:<18} {}", "model", rec.name);
    println!("{:<18} {}", "format", rec.format);
    println!("{:<18} {}", "source", rec.source);
    println!("{:<18} {} ({} bytes)", "size", mb(rec.size), rec.size);
    println!("{:<18} {} UTC", "created", crate::keys::date(rec.created));
    let details = if rec.format == "hf-dir" {
        describe_dir(&path)?
    } else {
        describe_gguf(&path)?
    };
    for (k, v) in details {
        println!("{k:<18} {v}");
    }
    let opts = store::options(&rec.name)?;
    if !opts.is_empty() {
        println!("{:<18} {}", "options", options_line(&opts));
    }
    println!("{:<18} {}", "files", rec.files.len());
    for f in &rec.files {
        println!("  {:<40} {:>12}  {}", f.path, f.size, f.blob);
    }
    Ok(())
}

fn options_line(o: &ferry_store::ModelOptions) -> String {
    o.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ferry config NAME [KEY=VALUE]... [--unset KEY]... [--reset]`: show or change a registered
/// model's serving options (checked against the model by `options::update`). They apply from
/// the model's next load.
pub fn config(name: &str, set: &[String], unset: &[String], reset: bool) -> Result<()> {
    let key = |k: &str| k.trim().replace('-', "_");
    let mut new = ferry_store::ModelOptions::new();
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("{kv:?}: options are KEY=VALUE, e.g. context_length=2048"))?;
        let k = key(k);
        let v: u64 = v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{k}: {v:?} is not a whole number"))?;
        new.insert(k, v);
    }
    let mut gone: Vec<String> = unset.iter().map(|k| key(k)).collect();
    if reset {
        gone.extend(store::options(name)?.into_keys());
    }
    let now = crate::options::update(name, &new, &gone).map_err(|e| anyhow!(e.message))?;
    if now.is_empty() {
        println!("{name}: no options (the server's flags apply)");
    } else {
        println!("{name}: {}", options_line(&now));
    }
    if !new.is_empty() || !gone.is_empty() {
        println!(
            "takes effect when {name} next loads (a running server: POST /v1/models/{name}/unload, then use it)"
        );
    }
    Ok(())
}

pub fn rm(names: &[String]) -> Result<()> {
    for name in names {
        let (rec, freed) = store::remove(name)?;
        let kept = rec
            .files
            .iter()
            .filter(|f| !freed.contains(&f.blob))
            .count();
        if kept > 0 {
            println!(
                "removed {} ({} blob(s) deleted; {kept} file(s) kept: their blobs are shared with other models)",
                rec.name,
                freed.len()
            );
        } else {
            println!("removed {} ({} blob(s) deleted)", rec.name, freed.len());
        }
    }
    Ok(())
}

/// `ferry prune`: what no model uses goes; prints each item and the total.
pub fn prune(partials: bool, dry_run: bool) -> Result<()> {
    let p = store::prune(partials, dry_run)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut total = 0u64;
    for (b, size) in &p.blobs {
        println!("{verb} blob {b} ({})", mb(*size));
        total += size;
    }
    for (path, size) in &p.partials {
        println!("{verb} {} ({})", path.display(), mb(*size));
        total += size;
    }
    for path in &p.trees {
        println!("{verb} {} (no model owns it)", path.display());
    }
    println!(
        "{verb} {} blob(s), {} temporary file(s), {} tree(s): {}",
        p.blobs.len(),
        p.partials.len(),
        p.trees.len(),
        mb(total)
    );
    if !p.kept_partials.is_empty() {
        let kept: u64 = p.kept_partials.iter().map(|(_, s)| s).sum();
        println!(
            "kept {} partial download(s) ({}) so that `ferry pull` can resume them; --partials removes them",
            p.kept_partials.len(),
            mb(kept)
        );
    }
    Ok(())
}

/// `GET {url}/v1/models` of a running server; prints the loaded models.
pub fn ps(url: &str, api_key: Option<&str>) -> Result<()> {
    let url = url.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--url must be an http(s) URL, got {url:?}");
    }
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut req = agent.get(format!("{url}/v1/models"));
    if let Some(k) = api_key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let resp = req
        .call()
        .map_err(|e| anyhow!("cannot reach a ferry server at {url}: {e} (start one with `ferry serve`, or pass --url)"))?;
    let status = resp.status().as_u16();
    let text = resp
        .into_body()
        .with_config()
        .limit(16 << 20)
        .read_to_string()
        .map_err(|e| anyhow!("reading {url}/v1/models: {e}"))?;
    if status != 200 {
        let hint = if status == 401 || status == 403 {
            " (pass an API key with --api-key or FERRY_API_KEY)"
        } else {
            ""
        };
        bail!(
            "{url}/v1/models answered HTTP {status}{hint}: {}",
            text.trim()
        );
    }
    let v: Value = serde_json::from_str(&text).context("the server did not answer JSON")?;
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .context("no `data` list in /v1/models")?;
    println!("{:<32} {:>12} {:>10}", "NAME", "MEMORY", "CONTEXT");
    for m in data {
        if m.get("state").and_then(Value::as_str) != Some("loaded") {
            continue;
        }
        let id = m.get("id").and_then(Value::as_str).unwrap_or("?");
        let mem = m
            .get("memory_bytes")
            .and_then(Value::as_u64)
            .map(mb)
            .unwrap_or_else(|| "-".into());
        let ctx = m
            .get("max_model_len")
            .and_then(Value::as_u64)
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        println!("{id:<32} {mem:>12} {ctx:>10}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_types() {
        assert_eq!(human_count(134_515_008), "135M");
        assert_eq!(human_count(1_240_000_000), "1.2B");
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(3), Some("Q4_1"));
        assert_eq!(file_type_name(999), None);
    }
}

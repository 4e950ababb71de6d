// The search page: POST /search, then build the result list from text nodes (no innerHTML,
// so document text can never inject markup). Marks come from the server as [start, end] spans.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;

function marked(text, spans) {
  const frag = document.createDocumentFragment();
  let at = 0;
  for (const [a, b] of spans || []) {
    if (a < at) continue;
    frag.append(text.slice(at, a));
    const m = document.createElement("mark");
    m.textContent = text.slice(a, b);
    frag.append(m);
    at = b;
  }
  frag.append(text.slice(at));
  return frag;
}

function el(tag, cls, ...children) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  e.append(...children);
  return e;
}

function stageLine(hit, reranked) {
  const parts = [`score ${hit.score.toFixed(4)}`];
  for (const [name, rank] of Object.entries(hit.stage_ranks || {})) {
    parts.push(`${name} #${rank ?? "–"}`);
  }
  parts.push(`first stage #${hit.first_stage_rank} (${hit.first_stage_score.toFixed(4)})`);
  if (reranked && hit.rerank_score !== null) {
    parts.push(`cross-encoder #${hit.rank} (${hit.rerank_score.toFixed(4)})`);
  }
  return parts.join(" · ");
}

function show(res) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of res.hits) {
    const li = el("li", "hit",
      el("div", "", el("span", "title", marked(hit.title || hit.doc_id, hit.title ? hit.title_marks : [])),
         el("span", "doc-id", hit.doc_id)),
      el("p", "snippet", marked(hit.snippet, hit.marks)),
      el("div", "meta", stageLine(hit, res.reranked)));
    li.dataset.docId = hit.doc_id;
    list.append(li);
  }
  const t = res.timing;
  const stages = [`encode ${t.encode_ms.toFixed(1)}`, `search ${t.search_ms.toFixed(1)}`];
  if (res.reranked) stages.push(`rerank ${t.rerank_ms.toFixed(1)}`);
  $("status").textContent = `${res.hits.length} hits in ${t.total_ms.toFixed(1)} ms ` +
    `(queue ${t.queue_ms.toFixed(1)} · ${stages.join(" · ")} ms; batch of ${res.batch_size})`;
  $("status").className = "";
}

async function search(ev) {
  ev.preventDefault();
  const body = { query: $("query").value, k: Number($("k").value) || 10 };
  if (info && info.rerank_model) body.rerank = $("rerank").checked;
  $("status").textContent = "searching…";
  try {
    const r = await fetch("/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const res = await r.json();
    if (!r.ok) throw new Error(res.error || `HTTP ${r.status}`);
    show(res);
  } catch (e) {
    $("results").replaceChildren();
    $("status").textContent = `error: ${e.message}`;
    $("status").className = "error";
  }
}

async function loadInfo() {
  try {
    info = await (await fetch("/info")).json();
    const parts = [`${info.index_kind} index`, `${info.corpus_size.toLocaleString()} documents`];
    if (info.model) parts.push(info.model.split("/").slice(-2).join("/"));
    if (info.rerank_model) parts.push(`reranked by ${info.rerank_model.split("/").pop()} (top ${info.rerank_top})`);
    $("info").textContent = parts.join(" · ");
    $("rerank-label").hidden = !info.rerank_model;
    $("k").max = info.limits.max_k;
  } catch (e) {
    $("info").textContent = "could not read /info";
  }
}

$("search-form").addEventListener("submit", search);
loadInfo();

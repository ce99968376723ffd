// The page of `cbir serve`: search the library by text, by a library image or by an uploaded
// one (or a box drawn on it), refined by marking results "more like this" / "less like this"
// (relevance feedback: like and unlike ids), through the JSON API of cbir/serve/app.py. Plain ES module, no build step, no
// dependencies; the Content-Security-Policy allows nothing inline, so all behaviour lives here.

const PAGE = 24; // results per request (?k= in the URL overrides it)
const DEBOUNCE_MS = 250;
const MAX_OFFSET = 10000; // the API refuses offsets beyond this
const FILTERS = ["after", "before", "folder", "camera", "where"];
const SWITCHES = ["frames"]; // checkboxes of the filters form: "true" in the query when ticked
const MULTI = new Set(["folder", "camera"]); // comma-separated in the box, repeated in the query
const MIN_CROP = 0.02; // a drag smaller than this share of the picture is a click, not a box

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("search-form"), q: $("q"), file: $("file"),
  chip: $("query-image"), chipImg: $("query-image-preview"), chipLabel: $("query-image-label"),
  chipRemove: $("query-image-remove"),
  filters: $("filters"), filtersToggle: $("filters-toggle"), filtersCount: $("filters-count"),
  filtersClear: $("filters-clear"), library: $("library"),
  statusLine: $("status-line"), summary: $("summary"), latency: $("latency"),
  plan: $("plan"), planStrategy: $("plan-strategy"), planReason: $("plan-reason"), planDetails: $("plan-details"),
  error: $("error"), results: $("results"), empty: $("empty"), grid: $("grid"),
  more: $("more"), spinner: $("spinner"), overlay: $("drop-overlay"),
  detail: $("detail"), detailImg: $("detail-img"), detailVideo: $("detail-video"), detailTitle: $("detail-title"), detailMeta: $("detail-meta"),
  detailTexts: $("detail-texts"), detailSimilar: $("detail-similar"), detailOriginal: $("detail-original"),
  detailClose: $("detail-close"), detailPrev: $("detail-prev"), detailNext: $("detail-next"),
  feedback: $("feedback"), feedbackSummary: $("feedback-summary"), feedbackApply: $("feedback-apply"),
  feedbackClear: $("feedback-clear"),
  cropPanel: $("crop-panel"), cropStage: $("crop-stage"), cropImg: $("crop-img"), cropBox: $("crop-box"),
  cropText: $("crop-text"), cropClear: $("crop-clear"),
};

const state = {
  k: PAGE,
  image: null, // {kind: "like", id, name} or {kind: "upload", blob, name, url}
  savedText: "", // the text searched before an image query replaced it
  crop: null, // {x, y, w, h}: the box of an uploaded image searched, fractions of the picture
  marks: new Map(), // id -> "like" | "unlike": the toggles on the cards
  feedback: { like: [], unlike: [] }, // the ids the results shown were searched with
  hits: [],
  ids: new Set(),
  offset: 0,
  done: true,
  selected: -1,
  detailIndex: -1,
  library: null, // /api/status
};

// ---------------------------------------------------------------- requests

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(url, init = {}) {
  const started = performance.now();
  const response = await fetch(url, { ...init, headers: { Accept: "application/json" }, credentials: "same-origin" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null; // 413 from the server's body limit, or a proxy's HTML page
  }
  const roundTrip = performance.now() - started;
  if (!response.ok) throw new ApiError(response.status, errorText(response, body));
  return { body, roundTrip };
}

function errorText(response, body) {
  if (response.status === 401) return "This server needs its token: open the URL cbir serve printed (…/?token=…).";
  if (body && typeof body.error === "string") return body.error;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`).join("; ");
  }
  if (response.status === 413) {
    const limit = state.library?.server?.upload_limit_bytes;
    return `The image is too large for this server${limit ? ` (limit ${formatBytes(limit)})` : ""}: cbir serve --upload-limit`;
  }
  return `${response.status} ${response.statusText || "error"}`.trim();
}

function queryString(offset) {
  const p = new URLSearchParams();
  const text = ui.q.value.trim();
  if (text) p.set("q", text);
  p.set("k", String(state.k));
  if (offset) p.set("offset", String(offset));
  for (const [name, values] of Object.entries(filterValues())) for (const v of values) p.append(name, v);
  for (const kind of ["like", "unlike"]) for (const id of state.feedback[kind]) p.append(kind, String(id));
  p.set("explain", "true");
  return p;
}

function filterValues() {
  const out = {};
  for (const name of FILTERS) {
    const raw = ui.filters.elements[name].value.trim();
    if (!raw) continue;
    out[name] = MULTI.has(name) ? raw.split(",").map((s) => s.trim()).filter(Boolean) : [raw];
  }
  for (const name of SWITCHES) if (ui.filters.elements[name].checked) out[name] = ["true"];
  return out;
}

function request(offset, signal) {
  const params = queryString(offset);
  const image = state.image;
  if (image?.kind === "like") return api(`/api/images/${image.id}/similar?${params}`, { signal });
  if (image?.kind === "upload") {
    const form = new FormData();
    form.append("file", image.blob, image.name);
    if (state.crop) form.append("crop", cropText(state.crop));
    return api(`/api/search/image?${params}`, { method: "POST", body: form, signal });
  }
  return api(`/api/search?${params}`, { signal });
}

// ---------------------------------------------------------------- searching

let generation = 0; // bumps with every new search: older responses are dropped
let controller = null;
let moreLoading = false;
let debounceTimer = 0;

function hasQuery() {
  return Boolean(state.image || ui.q.value.trim() || state.feedback.like.length);
}

async function search({ history = "push" } = {}) {
  clearTimeout(debounceTimer);
  controller?.abort();
  controller = null;
  const mine = ++generation;
  moreLoading = false;
  updateURL(history);
  if (!hasQuery()) {
    showIdle();
    return;
  }
  controller = new AbortController();
  setLoading(true);
  try {
    const { body, roundTrip } = await request(0, controller.signal);
    if (mine !== generation) return; // a newer search started meanwhile
    state.hits = [];
    state.ids = new Set();
    state.offset = 0;
    state.selected = -1;
    ui.grid.replaceChildren();
    window.scrollTo({ top: 0 });
    addPage(body, roundTrip);
  } catch (e) {
    if (mine !== generation || e.name === "AbortError") return;
    clearResults(); // results of the query before would pass for this one's
    showError(e);
  } finally {
    if (mine === generation) setLoading(false);
  }
}

async function loadMore() {
  if (moreLoading || state.done || !hasQuery() || !controller || ui.results.dataset.state === "loading") return;
  const mine = generation;
  moreLoading = true;
  ui.more.disabled = true;
  ui.spinner.hidden = false;
  try {
    const { body, roundTrip } = await request(state.offset, controller.signal);
    if (mine !== generation) return;
    addPage(body, roundTrip);
  } catch (e) {
    if (mine !== generation || e.name === "AbortError") return;
    showError(e);
  } finally {
    if (mine === generation) {
      moreLoading = false;
      ui.more.disabled = false;
      ui.spinner.hidden = true;
    }
  }
}

function searchSoon() {
  clearTimeout(debounceTimer);
  debounceTimer = setTimeout(() => search({ history: "typing" }), DEBOUNCE_MS);
}

function setLoading(on) {
  document.body.classList.toggle("loading", on);
  ui.results.setAttribute("aria-busy", on ? "true" : "false");
  if (on) ui.results.dataset.state = "loading";
}

// ---------------------------------------------------------------- rendering

function addPage(body, roundTrip) {
  hideError();
  const first = state.offset === 0;
  const fresh = body.hits.filter((h) => !state.ids.has(h.id));
  const fragment = document.createDocumentFragment();
  for (const hit of fresh) {
    state.ids.add(hit.id);
    fragment.append(card(hit, state.hits.length));
    state.hits.push(hit);
  }
  ui.grid.append(fragment);
  state.offset += body.count;
  state.done = body.count < state.k || state.offset + state.k > MAX_OFFSET;
  ui.more.hidden = state.done;
  showSummary(body, roundTrip);
  if (first && state.hits.length === 0) {
    showEmpty(noResultsText());
    ui.results.dataset.state = "empty";
  } else {
    ui.empty.hidden = true;
    ui.results.dataset.state = "done";
  }
}

function card(hit, index) {
  const name = itemName(hit);
  const item = el("div", { className: "card", role: "listitem" });
  item.dataset.id = hit.id;
  item.dataset.index = index;
  item.dataset.path = hit.path;
  const open = el("button", { type: "button", className: "thumb", title: `${name}\nClick: similar images · i: details` });
  open.setAttribute("aria-label", `${name}, score ${formatScore(hit.score)}: find similar images`);
  const img = el("img", { alt: name, loading: "lazy", decoding: "async" });
  img.sizes = "(max-width: 600px) 34vw, 240px";
  img.srcset = `${hit.thumbnail}?size=320 320w, ${hit.thumbnail}?size=640 640w`;
  img.src = `${hit.thumbnail}?size=320`;
  img.addEventListener("error", () => item.classList.add("broken"), { once: true });
  open.append(img);
  const score = el("span", { className: "score", textContent: formatScore(hit.score) });
  score.title = `rank ${hit.rank}, score ${hit.score}`;
  const info = el("button", { type: "button", className: "info", title: "Details (i)" });
  info.setAttribute("aria-label", `Details of ${name}`);
  info.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><circle cx="12" cy="12" r="9"/><path d="M12 11v6M12 7.5v.5"/></svg>';
  item.append(open, score, info, ...feedbackButtons(hit, name));
  showMark(item);
  const kind = itemKind(hit);
  if (kind) {
    // a PDF page or a video frame: which one, on the card itself
    item.classList.add(kind.className);
    item.append(el("span", { className: "kind-tag", textContent: kind.tag, title: name }));
  }
  if (hit.missing) {
    // the file is gone from disk since it was ingested: still a result, marked as such
    item.classList.add("missing");
    item.append(el("span", { className: "missing-tag", textContent: "missing", title: "This file is no longer on disk" }));
    open.setAttribute("aria-label", `${name} (file missing), score ${formatScore(hit.score)}: find similar images`);
  }
  return item;
}

function feedbackButtons(hit, name) {
  return [["like", "more", "+", "More like this"], ["unlike", "less", "−", "Less like this"]].map(([mark, className, sign, what]) => {
    const button = el("button", { type: "button", className: `fb ${className}`, textContent: sign, title: `${what} (${sign === "+" ? "+" : "-"}), then Search again` });
    button.dataset.mark = mark;
    button.setAttribute("aria-label", `${what}: ${name}`);
    button.setAttribute("aria-pressed", "false");
    return button;
  });
}

function showSummary(body, roundTrip) {
  const n = state.hits.length;
  ui.statusLine.hidden = false;
  ui.summary.textContent = state.done ? `${n.toLocaleString()} result${n === 1 ? "" : "s"}` : `Top ${n.toLocaleString()}`;
  ui.latency.textContent = `${formatMs(body.took_ms)} server · ${formatMs(roundTrip)} round trip`;
  ui.latency.title = "took_ms reported by the server, and the whole request as this page saw it";
  const plan = body.plan;
  ui.plan.hidden = !plan;
  if (!plan) return;
  ui.planStrategy.textContent = plan.strategy;
  ui.planReason.textContent = plan.reason || "";
  ui.planReason.title = plan.reason || "";
  const rows = [
    ["query", plan.kind],
    ["terms", plan.query],
    ["filters", plan.filters || "none"],
    ["library", plan.total],
    ["matching", plan.matching ?? "all"],
    ["examined", plan.examined],
    ["returned", plan.returned],
    ...(plan.rounds > 1 ? [["rounds", plan.rounds]] : []),
    ...Object.entries(plan.timings_ms || {}).map(([k, v]) => [k, formatMs(v)]),
  ];
  ui.planDetails.replaceChildren(...rows.map(([k, v]) => {
    const row = el("div");
    row.append(el("dt", { textContent: k }), el("dd", { textContent: String(v ?? "–") }));
    return row;
  }));
}

function noResultsText() {
  const active = Object.keys(filterValues()).length;
  return active ? "No results with these filters. Loosen or clear them." : "No results.";
}

function clearResults() {
  state.hits = [];
  state.ids = new Set();
  state.selected = -1;
  state.done = true;
  ui.grid.replaceChildren();
  ui.more.hidden = true;
  ui.statusLine.hidden = true;
  ui.empty.hidden = true;
}

function showIdle() {
  setLoading(false);
  clearResults();
  hideError();
  ui.results.dataset.state = "idle";
  const n = state.library?.images;
  if (state.library && n === 0) {
    showEmpty(emptyLibraryText());
  } else {
    showEmpty(`Search ${n ? `${n.toLocaleString()} images` : "your images"} by what is in them: type a description, or drop, paste or pick an image.`, "hint");
    const keys = el("p", { className: "keys" });
    for (const [key, what] of [["/", "search"], ["← ↑ → ↓", "move"], ["Enter", "similar"], ["i", "details"], ["Esc", "back"]]) {
      const item = el("span");
      item.append(el("kbd", { textContent: key }), ` ${what}`);
      keys.append(item);
    }
    ui.empty.append(keys);
  }
}

function emptyLibraryText() {
  return "This library is empty: run cbir ingest FOLDER, then reload this page.";
}

function showEmpty(text, kind = "") {
  ui.empty.textContent = text;
  ui.empty.className = `empty ${kind}`;
  ui.empty.hidden = false;
}

function showError(e) {
  const message = e instanceof Error ? e.message : String(e);
  if (e.status === 409 && /no images/.test(message)) {
    showEmpty(emptyLibraryText());
  }
  const [line] = message.split("\n");
  ui.error.textContent = line;
  ui.error.title = message;
  ui.error.hidden = false;
  ui.results.dataset.state = "error";
}

function hideError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

// ---------------------------------------------------------------- relevance feedback

// A toggle marks a result; "Search again" searches with the marks (kept in the URL as like and
// unlike ids), "Clear" drops them. Marks are pending until then, so several can be made at once.
function toggleMark(id, mark) {
  if (state.marks.get(id) === mark) state.marks.delete(id);
  else state.marks.set(id, mark);
  for (const item of ui.grid.querySelectorAll(`.card[data-id="${id}"]`)) showMark(item);
  showFeedback();
}

function showMark(item) {
  const mark = state.marks.get(Number(item.dataset.id));
  item.classList.toggle("liked", mark === "like");
  item.classList.toggle("unliked", mark === "unlike");
  for (const button of item.querySelectorAll(".fb")) button.setAttribute("aria-pressed", String(button.dataset.mark === mark));
}

function marked(mark) {
  return [...state.marks].filter(([, m]) => m === mark).map(([id]) => id);
}

function showFeedback() {
  const like = marked("like"), unlike = marked("unlike");
  const applied = state.feedback;
  const same = (a, b) => a.length === b.length && a.every((id) => b.includes(id));
  const pending = !same(like, applied.like) || !same(unlike, applied.unlike);
  ui.feedback.hidden = !(like.length || unlike.length || applied.like.length || applied.unlike.length);
  const parts = [];
  if (like.length) parts.push(`${like.length} more like this`);
  if (unlike.length) parts.push(`${unlike.length} less like this`);
  ui.feedbackSummary.textContent = (parts.join(", ") || "No marks") + (pending ? "" : " · searched");
  ui.feedbackApply.disabled = !pending;
}

function applyFeedback() {
  state.feedback = { like: marked("like"), unlike: marked("unlike") };
  showFeedback();
  search();
}

function clearFeedback({ run = true } = {}) {
  const searched = state.feedback.like.length || state.feedback.unlike.length;
  state.marks = new Map();
  state.feedback = { like: [], unlike: [] };
  for (const item of cards()) showMark(item);
  showFeedback();
  if (run && searched) search();
}

function setFeedback(like, unlike) {
  state.feedback = { like, unlike };
  state.marks = new Map([...like.map((id) => [id, "like"]), ...unlike.map((id) => [id, "unlike"])]);
  showFeedback();
}

// ---------------------------------------------------------------- a box on an uploaded image

function cropText(box) {
  return [box.x, box.y, box.w, box.h].join(",");
}

function showCrop() {
  const upload = state.image?.kind === "upload" ? state.image : null;
  ui.cropPanel.hidden = !upload;
  if (!upload) {
    ui.cropImg.removeAttribute("src");
    return;
  }
  if (ui.cropImg.getAttribute("src") !== upload.url) ui.cropImg.src = upload.url;
  ui.cropImg.alt = `${upload.name}: drag a box to search by part of it`;
  drawBox(state.crop);
  ui.cropClear.hidden = !state.crop;
  ui.cropText.textContent = state.crop ? "Searching by the box drawn." : "Drag a box on the picture to search by that part of it.";
}

function drawBox(box) {
  ui.cropBox.hidden = !box;
  if (!box) return;
  Object.assign(ui.cropBox.style, { left: `${box.x * 100}%`, top: `${box.y * 100}%`, width: `${box.w * 100}%`, height: `${box.h * 100}%` });
}

// the box between two points of the picture, in fractions rounded outwards to 4 decimals
function boxBetween(a, b) {
  const down = (v) => Math.floor(v * 1e4) / 1e4;
  const up = (v) => Math.min(1, Math.ceil(v * 1e4) / 1e4);
  const x = Math.min(down(Math.min(a.x, b.x)), 0.9999), y = Math.min(down(Math.min(a.y, b.y)), 0.9999);
  const w = Math.round((up(Math.max(a.x, b.x)) - x) * 1e4) / 1e4, h = Math.round((up(Math.max(a.y, b.y)) - y) * 1e4) / 1e4;
  return { x, y, w: Math.min(w, 1 - x), h: Math.min(h, 1 - y) };
}

function wireCrop() {
  let start = null;
  const point = (e) => {
    const r = ui.cropImg.getBoundingClientRect();
    const clamp = (v) => Math.max(0, Math.min(1, v));
    return { x: clamp((e.clientX - r.left) / r.width), y: clamp((e.clientY - r.top) / r.height) };
  };
  ui.cropStage.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || !ui.cropImg.complete) return;
    e.preventDefault();
    start = point(e);
    ui.cropStage.setPointerCapture(e.pointerId);
    drawBox(boxBetween(start, start));
  });
  ui.cropStage.addEventListener("pointermove", (e) => {
    if (start) drawBox(boxBetween(start, point(e)));
  });
  ui.cropStage.addEventListener("pointerup", (e) => {
    if (!start) return;
    const box = boxBetween(start, point(e));
    start = null;
    if (box.w < MIN_CROP || box.h < MIN_CROP) {
      drawBox(state.crop); // a click: the box stays as it was
      return;
    }
    state.crop = box;
    showCrop();
    search();
  });
  ui.cropStage.addEventListener("pointercancel", () => {
    start = null;
    drawBox(state.crop);
  });
  ui.cropClear.addEventListener("click", () => {
    state.crop = null;
    showCrop();
    search();
  });
}

// ---------------------------------------------------------------- image queries

function likeImage(hit) {
  if (state.image?.kind === "upload") URL.revokeObjectURL(state.image.url);
  if (!state.image) state.savedText = ui.q.value;
  state.image = { kind: "like", id: hit.id, name: itemName(hit) };
  state.crop = null;
  clearFeedback({ run: false }); // a new query: marks made on the last one's results are dropped
  ui.q.value = "";
  showChip();
  search();
}

function uploadImage(blob, name) {
  if (!blob) return;
  const limit = state.library?.server?.upload_limit_bytes;
  if (limit && blob.size > limit) {
    showError(new Error(`${name || "The image"} is ${formatBytes(blob.size)}, over this server's limit of ${formatBytes(limit)}`));
    return;
  }
  if (state.image?.kind === "upload") URL.revokeObjectURL(state.image.url);
  if (!state.image) state.savedText = ui.q.value;
  state.image = { kind: "upload", blob, name: name || "pasted image", url: URL.createObjectURL(blob) };
  state.crop = null;
  clearFeedback({ run: false });
  ui.q.value = "";
  showChip();
  search();
}

function clearImage({ run = true } = {}) {
  if (!state.image) return;
  if (state.image.kind === "upload") URL.revokeObjectURL(state.image.url);
  state.image = null;
  state.crop = null;
  if (!ui.q.value.trim()) ui.q.value = state.savedText;
  state.savedText = "";
  showChip();
  if (run) search();
}

function showChip() {
  const image = state.image;
  ui.chip.hidden = !image;
  ui.form.classList.toggle("with-image", Boolean(image));
  ui.q.placeholder = image ? "Add words to the image query…" : 'Search photos: "a dog in the snow"';
  showCrop();
  if (!image) {
    ui.chipImg.removeAttribute("src");
    return;
  }
  ui.chipImg.classList.remove("broken");
  ui.chipImg.src = image.kind === "like" ? `/api/images/${image.id}/thumbnail?size=160` : image.url;
  ui.chipImg.alt = image.kind === "like" ? `query: ${image.name}` : `query: uploaded ${image.name}`;
  ui.chipLabel.textContent = image.kind === "like" ? `Like ${image.name}` : image.name;
  ui.chip.title = image.kind === "like" ? `Images similar to ${image.name} (library image ${image.id})` : `Images similar to ${image.name}`;
}

function imageFrom(items) {
  for (const item of Array.from(items || [])) { // DataTransferItemList is array-like, not iterable everywhere
    const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file && (file.type.startsWith("image/") || !file.type)) return file;
  }
  return null;
}

// ---------------------------------------------------------------- the detail view

async function openDetail(index) {
  const hit = state.hits[index];
  if (!hit) return;
  state.detailIndex = index;
  select(index, { focus: false });
  const name = itemName(hit);
  ui.detailTitle.textContent = name;
  showDetailPicture(hit, name);
  ui.detailOriginal.href = hit.original;
  ui.detailOriginal.textContent = hit.page != null ? `Open the PDF at page ${hit.page}`
    : hit.time != null ? `Open the video at ${formatTime(hit.time)}` : "Open original";
  ui.detailPrev.disabled = index === 0;
  ui.detailNext.disabled = index >= state.hits.length - 1;
  renderMeta(hit, null);
  ui.detailTexts.replaceChildren();
  if (!ui.detail.open) ui.detail.showModal();
  try {
    const { body } = await api(`/api/images/${hit.id}`);
    if (state.detailIndex === index && ui.detail.open) renderMeta(hit, body);
  } catch (e) {
    if (state.detailIndex === index) ui.detailTexts.replaceChildren(el("p", { className: "error", textContent: e.message }));
  }
}

// A video frame plays in the view from its moment; a PDF page, or a photo, is its large thumbnail.
function showDetailPicture(hit, name) {
  stopDetailVideo();
  const video = ui.detailVideo;
  if (hit.time == null) {
    ui.detailImg.hidden = false;
    ui.detailImg.alt = name;
    ui.detailImg.src = `${hit.thumbnail}?size=1280`;
    return;
  }
  ui.detailImg.hidden = true;
  ui.detailImg.removeAttribute("src");
  video.hidden = false;
  video.poster = `${hit.thumbnail}?size=1280`;
  video.setAttribute("aria-label", name);
  // the #t= media fragment starts it there; a browser that ignores it is moved once it knows the length
  video.addEventListener("loadedmetadata", () => {
    if (Math.abs(video.currentTime - hit.time) > 0.25) video.currentTime = hit.time;
  }, { once: true });
  video.src = hit.original;
}

function stopDetailVideo() {
  const video = ui.detailVideo;
  video.hidden = true;
  if (!video.hasAttribute("src")) return;
  video.pause();
  video.removeAttribute("src");
  video.removeAttribute("poster");
  video.load(); // drops the connection and the buffered data
}

function renderMeta(hit, full) {
  const info = full || hit;
  const rows = [
    ["Folder", dirName(info.file || info.path)],
    ["File", hit.missing || full?.missing ? "missing: no longer on disk" : null],
    ["Page", info.page],
    ["Moment", info.time != null ? `${formatTime(info.time)}${info.duration ? ` of ${formatTime(info.duration)}` : ""}` : null],
    ["Size", info.width && info.height ? `${info.width} × ${info.height}${info.page != null ? " pt" : ""}` : null],
    ["Format", info.format],
    ["Taken", formatDate(info.taken_at || info.taken) + (info.taken_at ? "" : info.taken ? " (file date)" : "")],
    ["Camera", info.camera],
    ["Score", `${formatScore(hit.score)} (rank ${hit.rank})`],
    ["Id", info.id],
  ];
  for (const [k, v] of Object.entries(full?.extra || {})) rows.push([k, typeof v === "object" ? JSON.stringify(v) : v]);
  ui.detailMeta.replaceChildren(...rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", { textContent: k }), el("dd", { textContent: String(v), title: String(v) })]));
  if (full?.texts?.length) {
    const list = el("ul", { className: "texts" });
    for (const t of full.texts) {
      const li = el("li");
      li.append(el("span", { className: "pill", textContent: t.source }), document.createTextNode(` ${t.text}`));
      list.append(li);
    }
    ui.detailTexts.replaceChildren(el("h3", { textContent: "Texts" }), list);
  }
}

function closeDetail() {
  if (ui.detail.open) ui.detail.close();
  afterDetail();
}

function afterDetail() {
  // the dialog hands focus back to the card it was opened from: move on to the one viewed last
  const index = state.detailIndex;
  state.detailIndex = -1;
  ui.detailImg.removeAttribute("src");
  stopDetailVideo();
  if (index >= 0 && index < cards().length) select(index);
}

// ---------------------------------------------------------------- selection and keys

function cards() {
  return ui.grid.children;
}

function select(index, { focus = true } = {}) {
  const all = cards();
  if (!all.length) return;
  index = Math.max(0, Math.min(index, all.length - 1));
  all[state.selected]?.classList.remove("selected");
  all[state.selected]?.removeAttribute("aria-current");
  state.selected = index;
  const chosen = all[index];
  chosen.classList.add("selected");
  chosen.setAttribute("aria-current", "true");
  if (focus) chosen.querySelector(".thumb").focus({ preventScroll: true });
  chosen.scrollIntoView({ block: "nearest" });
  if (index >= all.length - columns()) loadMore(); // arrowing onto the last row fetches the next page
}

function columns() {
  const all = cards();
  if (!all.length) return 1;
  const top = all[0].offsetTop;
  let n = 0;
  while (n < all.length && all[n].offsetTop === top) n++;
  return Math.max(1, n);
}

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (ui.detail.open) {
    if (e.target === ui.detailVideo && !ui.detailVideo.hidden && e.key !== "Escape") return; // its keys: seek, volume
    if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      e.preventDefault();
      const next = state.detailIndex + (e.key === "ArrowLeft" ? -1 : 1);
      if (next >= 0 && next < state.hits.length) openDetail(next);
    } else if (e.key === "i" || e.key === "Escape") {
      e.preventDefault();
      closeDetail();
    }
    return;
  }
  if (e.target === ui.q) {
    if (e.key === "ArrowDown" && cards().length) {
      e.preventDefault();
      select(state.selected >= 0 ? state.selected : 0);
    } else if (e.key === "Escape" && state.image && !ui.q.value) {
      e.preventDefault();
      clearImage();
    }
    return;
  }
  if (typing(e.target)) return;
  const n = cards().length;
  const current = state.selected;
  switch (e.key) {
    case "/":
      e.preventDefault();
      ui.q.focus();
      ui.q.select();
      return;
    case "ArrowRight": case "ArrowLeft": case "ArrowDown": case "ArrowUp": {
      if (!n) return;
      e.preventDefault();
      if (current < 0) return select(0);
      const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() }[e.key];
      if (e.key === "ArrowUp" && current < columns()) {
        ui.q.focus();
        return;
      }
      const next = current + step;
      if (next >= 0 && next < n) select(next);
      return;
    }
    case "Home": if (n) { e.preventDefault(); select(0); } return;
    case "End": if (n) { e.preventDefault(); select(n - 1); } return;
    case "Enter":
      if (current >= 0 && !(e.target instanceof HTMLButtonElement || e.target instanceof HTMLAnchorElement)) {
        e.preventDefault();
        likeImage(state.hits[current]);
      }
      return;
    case "i":
      if (current >= 0) {
        e.preventDefault();
        openDetail(current);
      }
      return;
    case "+": case "-":
      if (current >= 0) {
        e.preventDefault();
        toggleMark(state.hits[current].id, e.key === "+" ? "like" : "unlike");
      }
      return;
    case "Escape":
      if (state.image) {
        e.preventDefault();
        clearImage();
      }
      return;
  }
}

// ---------------------------------------------------------------- the URL

let lastHistory = "";

function stateURL() {
  const p = new URLSearchParams();
  const text = ui.q.value.trim();
  if (text) p.set("q", text);
  if (state.image?.kind === "like") p.append("like", String(state.image.id));
  for (const kind of ["like", "unlike"]) for (const id of state.feedback[kind]) p.append(kind, String(id));
  for (const [name, values] of Object.entries(filterValues())) for (const v of values) p.append(name, v);
  if (state.k !== PAGE) p.set("k", String(state.k));
  const s = p.toString();
  return s ? `?${s}` : location.pathname;
}

function updateURL(how) {
  if (how === "none") return;
  const url = stateURL();
  if (url === location.search || (url === location.pathname && !location.search)) {
    lastHistory = how;
    return;
  }
  // typing replaces its own entry, so Back goes to the query before it rather than to every keystroke
  if (how === "replace" || (how === "typing" && lastHistory === "typing")) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  lastHistory = how;
}

function fromURL() {
  const p = new URLSearchParams(location.search);
  ui.q.value = p.get("q") || "";
  for (const name of FILTERS) ui.filters.elements[name].value = p.getAll(name).join(MULTI.has(name) ? ", " : " ");
  for (const name of SWITCHES) ui.filters.elements[name].checked = p.get(name) === "true";
  const k = Number(p.get("k"));
  state.k = Number.isInteger(k) && k >= 1 && k <= 500 ? k : PAGE;
  // like: library image ids, the first of them the query image when there is no text ("similar
  // to"), the others marked "more like this"; unlike: marked "less like this"
  const ids = (name) => p.getAll(name).map(Number).filter((id) => Number.isInteger(id) && id > 0);
  const likes = ids("like");
  const chip = !ui.q.value.trim() && likes.length ? likes.shift() : null;
  if (state.image?.kind === "upload") URL.revokeObjectURL(state.image.url);
  state.image = chip ? { kind: "like", id: chip, name: `image ${chip}` } : null;
  state.crop = null;
  setFeedback(likes, ids("unlike").filter((id) => !likes.includes(id)));
  if (state.image) nameLikedImage(state.image);
  showChip();
  updateFilterCount();
  if (Object.keys(filterValues()).length) setFiltersOpen(true);
}

async function nameLikedImage(image) {
  try {
    const { body } = await api(`/api/images/${image.id}`);
    if (state.image === image) {
      image.name = itemName(body);
      showChip();
    }
  } catch {
    // the search itself reports a missing image
  }
}

// ---------------------------------------------------------------- filters

function updateFilterCount() {
  const n = Object.keys(filterValues()).length;
  ui.filtersCount.hidden = n === 0;
  ui.filtersCount.textContent = String(n);
  ui.filtersClear.hidden = n === 0;
}

function setFiltersOpen(open) {
  document.body.classList.toggle("filters-open", open);
  ui.filtersToggle.setAttribute("aria-expanded", String(open));
}

// ---------------------------------------------------------------- the library

async function loadStatus() {
  try {
    const { body } = await api("/api/status");
    state.library = body;
    const n = body.images ?? 0;
    ui.library.textContent = `${n.toLocaleString()} image${n === 1 ? "" : "s"} · ${body.model}`;
    ui.library.title = [
      body.library,
      `${body.index_type} index, ${body.index_vectors ?? 0} vectors${body.index_current === false ? " (being updated)" : ""}`,
      body.texts ? `${body.texts} texts` : "",
      body.skipped ? `${body.skipped} files skipped` : "",
      body.server?.version ? `cbir ${body.server.version}` : "",
    ].filter(Boolean).join("\n");
    document.title = `cbir · ${n.toLocaleString()} images`;
    if (ui.results.dataset.state === "idle") showIdle();
  } catch (e) {
    ui.library.textContent = "";
    showError(e);
    if (e.status === 401) showEmpty("Open the URL that cbir serve printed (it carries the token), or ask whoever runs the server for it.");
  }
}

// ---------------------------------------------------------------- helpers

function el(tag, props = {}) {
  return Object.assign(document.createElement(tag), props);
}

function baseName(path) {
  return String(path || "").split(/[\\/]/).pop();
}

// "report.pdf · p. 3", "clip.mp4 · 0:12", or a photo's file name
function itemName(hit) {
  const file = baseName(hit.file || hit.path);
  if (hit.page != null) return `${file} · p. ${hit.page}`;
  if (hit.time != null) return `${file} · ${formatTime(hit.time)}`;
  return file;
}

function itemKind(hit) {
  if (hit.page != null) return { className: "pdf-page", tag: `PDF · p. ${hit.page}` };
  if (hit.time != null) return { className: "video-frame", tag: `▶ ${formatTime(hit.time)}` };
  return null;
}

function formatTime(seconds) {
  const s = Math.floor(Math.max(0, seconds));
  const hours = Math.floor(s / 3600);
  const rest = `${String(Math.floor((s % 3600) / 60)).padStart(hours ? 2 : 1, "0")}:${String(s % 60).padStart(2, "0")}`;
  return hours ? `${hours}:${rest}` : rest;
}

function dirName(path) {
  const parts = String(path || "").split(/[\\/]/);
  parts.pop();
  return parts.join("/");
}

function formatScore(score) {
  return typeof score === "number" ? score.toFixed(2) : "–";
}

function formatMs(ms) {
  if (typeof ms !== "number") return "–";
  return ms < 10 ? `${ms.toFixed(1)} ms` : ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function formatBytes(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)} MB` : `${Math.ceil(n / 1e3)} kB`;
}

function formatDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: iso.length > 10 ? "short" : undefined });
}

// ---------------------------------------------------------------- wiring

function wire() {
  ui.q.addEventListener("input", () => {
    if (!hasQuery()) {
      search({ history: "typing" }); // cleared: back to the start at once
      return;
    }
    searchSoon();
  });
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    search({ history: "push" });
  });
  $("pick").addEventListener("click", () => ui.file.click());
  ui.file.addEventListener("change", () => {
    const file = ui.file.files?.[0];
    ui.file.value = ""; // the same file picked again is a new search
    if (file) uploadImage(file, file.name);
  });
  ui.chipRemove.addEventListener("click", () => {
    clearImage();
    ui.q.focus();
  });
  ui.chipImg.addEventListener("error", () => ui.chipImg.classList.add("broken"));

  ui.grid.addEventListener("click", (e) => {
    const item = e.target.closest(".card");
    if (!item) return;
    const index = Number(item.dataset.index);
    const toggle = e.target.closest(".fb");
    if (toggle) toggleMark(Number(item.dataset.id), toggle.dataset.mark);
    else if (e.target.closest(".info")) openDetail(index);
    else if (e.target.closest(".thumb")) likeImage(state.hits[index]);
  });
  ui.grid.addEventListener("focusin", (e) => {
    const item = e.target.closest(".card");
    if (item && Number(item.dataset.index) !== state.selected) select(Number(item.dataset.index), { focus: false });
  });
  ui.more.addEventListener("click", loadMore);
  ui.feedbackApply.addEventListener("click", applyFeedback);
  ui.feedbackClear.addEventListener("click", () => clearFeedback());
  wireCrop();
  let ticking = false;
  window.addEventListener("scroll", () => {
    if (ticking) return;
    ticking = true;
    requestAnimationFrame(() => {
      ticking = false;
      const nearBottom = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 600;
      if (nearBottom && !state.done) loadMore();
    });
  }, { passive: true });

  for (const input of ui.filters.elements) {
    if (!(input instanceof HTMLInputElement)) continue;
    input.addEventListener("input", () => {
      updateFilterCount();
      if (hasQuery()) searchSoon();
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        if (hasQuery()) search();
      }
    });
  }
  ui.filters.addEventListener("submit", (e) => e.preventDefault());
  ui.filtersClear.addEventListener("click", () => {
    ui.filters.reset();
    updateFilterCount();
    if (hasQuery()) search();
  });
  ui.filtersToggle.addEventListener("click", () => setFiltersOpen(!document.body.classList.contains("filters-open")));

  ui.detailClose.addEventListener("click", closeDetail);
  ui.detailPrev.addEventListener("click", () => openDetail(state.detailIndex - 1));
  ui.detailNext.addEventListener("click", () => openDetail(state.detailIndex + 1));
  ui.detailSimilar.addEventListener("click", () => {
    const hit = state.hits[state.detailIndex];
    closeDetail();
    if (hit) likeImage(hit);
  });
  ui.detail.addEventListener("click", (e) => {
    if (e.target === ui.detail) closeDetail(); // the backdrop
  });
  ui.detail.addEventListener("close", afterDetail);

  document.addEventListener("keydown", onKey);

  // an image dropped anywhere, or pasted, is a query
  let depth = 0;
  const carriesFiles = (e) => Array.from(e.dataTransfer?.types || []).includes("Files");
  document.addEventListener("dragenter", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    depth++;
    ui.overlay.hidden = false;
  });
  document.addEventListener("dragover", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", (e) => {
    if (!carriesFiles(e)) return;
    depth = Math.max(0, depth - 1);
    if (!depth) ui.overlay.hidden = true;
  });
  document.addEventListener("drop", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    depth = 0;
    ui.overlay.hidden = true;
    const file = imageFrom(e.dataTransfer.files);
    if (file) uploadImage(file, file.name);
    else showError(new Error("Drop an image file to search by it"));
  });
  document.addEventListener("paste", (e) => {
    const file = imageFrom(e.clipboardData?.items) || imageFrom(e.clipboardData?.files);
    if (!file) return; // text pastes into the box as usual
    e.preventDefault();
    uploadImage(file, file.name && file.name !== "image.png" ? file.name : "pasted image");
  });

  window.addEventListener("popstate", () => {
    closeDetail();
    fromURL();
    search({ history: "none" });
  });
  window.addEventListener("focus", () => loadStatus());
}

function start() {
  wire();
  setFiltersOpen(window.matchMedia("(min-width: 760px)").matches);
  fromURL();
  loadStatus();
  if (hasQuery()) search({ history: "none" });
  else showIdle();
  if (!hasQuery() && window.matchMedia("(hover: hover)").matches) ui.q.focus();
}

start();

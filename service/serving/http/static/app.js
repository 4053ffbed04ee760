// diffres-serve web page: plain JS, no framework, no network beyond this server.
// Views are drawn on canvases from the JSON of POST /classify and POST /compress; the
// log-mel of an audio upload is computed here (the API returns no input features).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "diffres.apiKey";
const OKABE_BLUE = "#0072B2", OKABE_VERMILLION = "#D55E00";
const state = { models: [], input: null, result: null };

// ---- API -------------------------------------------------------------------------------
function headers() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!response.ok) {
    const err = body && body.error;
    const message = err && typeof err === "object"
      ? `${err.code}: ${err.message}` : (typeof err === "string" ? err : text || response.statusText);
    throw new Error(`${response.status} ${message}`);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) { $("status").textContent = text; }

// ---- models ------------------------------------------------------------------------------
async function loadModels() {
  const data = await api("/models");
  state.models = data.models;
  const names = [...new Set(data.models.map((m) => m.name))];
  $("model").replaceChildren(...names.map((n) => new Option(n, n, false, n === data.default_model)));
  fillVersions();
}

function fillVersions() {
  const name = $("model").value;
  const versions = state.models.filter((m) => m.name === name && m.state === "ready")
    .map((m) => m.version).sort((a, b) => b - a);
  $("version").replaceChildren(new Option("latest", ""), ...versions.map((v) => new Option(String(v), String(v))));
}

function chosenModel() {
  const name = $("model").value, version = $("version").value;
  const ready = state.models.filter((m) => m.name === name && m.state === "ready");
  const info = version ? ready.find((m) => String(m.version) === version)
    : ready.sort((a, b) => b.version - a.version)[0];
  return { name, version, info };
}

async function loadFeatures() {
  try {
    const features = await api("/ui/features");
    $("live").hidden = !features.stream;
  } catch (e) { $("live").hidden = true; }
}

// ---- input: file or microphone -----------------------------------------------------------
async function takeFile(file) {
  showError("");
  if (/\.json$/i.test(file.name) || file.type === "application/json") {
    const text = await file.text();
    let spec;
    try { spec = JSON.parse(text).spectrogram; } catch (e) { spec = null; }
    state.input = { body: text, type: "application/json", mel: Array.isArray(spec) ? spec : null, name: file.name };
  } else {
    state.input = { body: file, type: "form", mel: null, name: file.name };
  }
  $("analyse").disabled = false;
  setStatus(`ready: ${file.name}`);
}

let recorder = null;
async function toggleRecord() {
  if (recorder) { recorder.stop(); return; }
  showError("");
  let stream;
  try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch (e) {
    showError(`microphone: ${e.message}`); return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    recorder = null;
    $("record").textContent = "Record";
    try {
      const ctx = new AudioContext();
      const audio = await ctx.decodeAudioData(await new Blob(chunks).arrayBuffer());
      const wav = encodeWav(mono(audio), audio.sampleRate);
      await takeFile(new File([wav], "recording.wav", { type: "audio/wav" }));
    } catch (e) { showError(`recording: ${e.message}`); }
  };
  recorder.start();
  $("record").textContent = "Stop";
  setStatus("recording…");
}

function mono(audio) {
  const out = new Float32Array(audio.length);
  for (let c = 0; c < audio.numberOfChannels; c++) {
    const data = audio.getChannelData(c);
    for (let i = 0; i < out.length; i++) out[i] += data[i] / audio.numberOfChannels;
  }
  return out;
}

function encodeWav(samples, rate) {  // 16-bit PCM mono
  const buffer = new ArrayBuffer(44 + samples.length * 2), v = new DataView(buffer);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + samples.length * 2, true); str(8, "WAVE");
  str(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, rate * 2, true); v.setUint16(32, 2, true);
  v.setUint16(34, 16, true); str(36, "data"); v.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return buffer;
}

// ---- log-mel in the browser (HTK mel, periodic Hann, natural log) -------------------------
function fft(re, im) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) { [re[i], re[j]] = [re[j], re[i]]; [im[i], im[j]] = [im[j], im[i]]; }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const ang = -2 * Math.PI / len, wr = Math.cos(ang), wi = Math.sin(ang);
    for (let i = 0; i < n; i += len) {
      let cr = 1, ci = 0;
      for (let k = 0; k < len / 2; k++) {
        const a = i + k, b = a + len / 2;
        const tr = re[b] * cr - im[b] * ci, ti = re[b] * ci + im[b] * cr;
        re[b] = re[a] - tr; im[b] = im[a] - ti; re[a] += tr; im[a] += ti;
        [cr, ci] = [cr * wr - ci * wi, cr * wi + ci * wr];
      }
    }
  }
}

async function logMel(file, rate, nMels, hopSeconds) {
  const ctx = new OfflineAudioContext(1, 1, rate);
  const decoded = await ctx.decodeAudioData(await file.arrayBuffer());
  let wave = mono(decoded);
  if (decoded.sampleRate !== rate) {
    const off = new OfflineAudioContext(1, Math.ceil(decoded.duration * rate), rate);
    const src = off.createBufferSource();
    src.buffer = decoded; src.connect(off.destination); src.start();
    wave = (await off.startRendering()).getChannelData(0);
  }
  const hop = Math.round(hopSeconds * rate), win = Math.round(0.025 * rate);
  let nfft = 1; while (nfft < win) nfft <<= 1;
  const hz2mel = (f) => 2595 * Math.log10(1 + f / 700), mel2hz = (m) => 700 * (10 ** (m / 2595) - 1);
  const edges = [];
  for (let i = 0; i < nMels + 2; i++) edges.push(mel2hz(hz2mel(0) + (hz2mel(rate / 2) - hz2mel(0)) * i / (nMels + 1)));
  const frames = 1 + Math.floor(wave.length / hop), bins = nfft / 2 + 1, out = [];
  for (let t = 0; t < frames; t++) {
    const re = new Float64Array(nfft), im = new Float64Array(nfft), off = (nfft - win) >> 1;
    for (let i = 0; i < win; i++) {
      const idx = t * hop - (nfft >> 1) + off + i;
      const s = idx >= 0 && idx < wave.length ? wave[idx] : 0;
      re[off + i] = s * (0.5 - 0.5 * Math.cos(2 * Math.PI * i / win));
    }
    fft(re, im);
    const row = new Array(nMels).fill(0);
    for (let k = 0; k < bins; k++) {
      const f = k * rate / nfft, p = re[k] * re[k] + im[k] * im[k];
      for (let m = 0; m < nMels; m++) {
        const lo = edges[m], mid = edges[m + 1], hi = edges[m + 2];
        const w = f > lo && f < hi ? (f <= mid ? (f - lo) / (mid - lo) : (hi - f) / (hi - mid)) : 0;
        row[m] += w * p;
      }
    }
    out.push(row.map((v) => Math.log(Math.max(v, 1e-10))));
  }
  return out;
}

// ---- analysis ----------------------------------------------------------------------------
async function analyse() {
  if (!state.input) return;
  showError("");
  const { name, version, info } = chosenModel();
  const query = new URLSearchParams({ model: name, top_k: "5" });
  if (version) query.set("version", version);
  const body = () => {
    if (state.input.type !== "form") return { body: state.input.body, headers: { "Content-Type": state.input.type } };
    const form = new FormData();
    form.append("file", state.input.body, state.input.name);
    return { body: form };
  };
  setStatus("analysing…");
  $("analyse").disabled = true;
  try {
    const classify = await api(`/classify?${query}`, { method: "POST", ...body() });
    let compress = null;
    if (info && info.operations && info.operations.includes("compress")) {
      query.delete("top_k");
      compress = await api(`/compress?${query}`, { method: "POST", ...body() });
    }
    let mel = state.input.mel;
    if (!mel && info) {
      try {
        mel = await logMel(state.input.body, info.input.sample_rate, info.input.n_mels, classify.frame_hop_seconds);
      } catch (e) { mel = null; }
    }
    state.result = { classify, compress, mel, kind: info ? info.kind : "?" };
    render();
    setStatus(`done: ${classify.model} v${classify.version}`);
  } catch (e) {
    showError(e.message);
    setStatus("failed");
  } finally {
    $("analyse").disabled = false;
  }
}

// ---- drawing -----------------------------------------------------------------------------
const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725"]
  .map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
function viridis(x) {
  const t = Math.max(0, Math.min(1, x)) * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + (VIRIDIS[i + 1][k] - c) * f));
}

const PAD = { left: 50, right: 10, top: 8, bottom: 28 };
function plotArea(canvas) {
  return { x: PAD.left, y: PAD.top, w: canvas.width - PAD.left - PAD.right, h: canvas.height - PAD.top - PAD.bottom };
}

function timeAxis(ctx, area, duration, label = "time (s)") {
  ctx.fillStyle = "#222"; ctx.strokeStyle = "#888"; ctx.font = "11px sans-serif"; ctx.textAlign = "center";
  const step = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30].find((s) => duration / s <= 10) || 60;
  for (let t = 0; t <= duration + 1e-9; t += step) {
    const x = area.x + area.w * t / duration;
    ctx.beginPath(); ctx.moveTo(x, area.y + area.h); ctx.lineTo(x, area.y + area.h + 4); ctx.stroke();
    ctx.fillText(t.toFixed(step < 0.1 ? 2 : 1), x, area.y + area.h + 15);
  }
  ctx.fillText(label, area.x + area.w / 2, area.y + area.h + 26);
}

function drawMap(canvas, rows, duration, boundaries) {
  const ctx = canvas.getContext("2d"), area = plotArea(canvas);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!rows || !rows.length) { ctx.fillText("no spectrogram", area.x + 10, area.y + 20); return; }
  let lo = Infinity, hi = -Infinity;
  for (const r of rows) for (const v of r) { if (v < lo) lo = v; if (v > hi) hi = v; }
  const T = rows.length, F = rows[0].length, img = ctx.createImageData(T, F);
  for (let t = 0; t < T; t++) for (let f = 0; f < F; f++) {
    const [r, g, b] = viridis((rows[t][f] - lo) / (hi - lo || 1)), o = ((F - 1 - f) * T + t) * 4;
    img.data[o] = r; img.data[o + 1] = g; img.data[o + 2] = b; img.data[o + 3] = 255;
  }
  const tmp = document.createElement("canvas"); tmp.width = T; tmp.height = F;
  tmp.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tmp, area.x, area.y, area.w, area.h);
  if (boundaries && boundaries.length < 400) {
    ctx.strokeStyle = "rgba(255,255,255,0.6)"; ctx.lineWidth = 1;
    for (const frame of boundaries) {
      const x = area.x + area.w * frame / T;
      ctx.beginPath(); ctx.moveTo(x, area.y); ctx.lineTo(x, area.y + area.h); ctx.stroke();
    }
  }
  ctx.save(); ctx.translate(12, area.y + area.h / 2); ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center"; ctx.fillStyle = "#222"; ctx.fillText("mel band", 0, 0); ctx.restore();
  timeAxis(ctx, area, duration);
  canvas.dataset.rendered = "1";
}

function drawScores(canvas, scores, duration) {
  const ctx = canvas.getContext("2d"), area = plotArea(canvas);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const max = Math.max(...scores, 1e-9);
  ctx.strokeStyle = OKABE_BLUE; ctx.fillStyle = "rgba(0,114,178,0.2)"; ctx.lineWidth = 1.5;
  ctx.beginPath(); ctx.moveTo(area.x, area.y + area.h);
  scores.forEach((s, i) => ctx.lineTo(area.x + area.w * (i + 0.5) / scores.length, area.y + area.h * (1 - s / max)));
  ctx.lineTo(area.x + area.w, area.y + area.h); ctx.fill(); ctx.stroke();
  ctx.fillStyle = "#222"; ctx.font = "11px sans-serif"; ctx.textAlign = "right";
  ctx.fillText(max.toFixed(2), area.x - 4, area.y + 8); ctx.fillText("0", area.x - 4, area.y + area.h);
  ctx.save(); ctx.translate(12, area.y + area.h / 2); ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center"; ctx.fillText("score", 0, 0); ctx.restore();
  timeAxis(ctx, area, duration);
  canvas.dataset.rendered = "1";
}

function drawBars(canvas, items) {  // items: [{label, value, text}]
  const ctx = canvas.getContext("2d"), area = { x: 110, y: 8, w: canvas.width - 170, h: canvas.height - 16 };
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const rowH = area.h / Math.max(1, items.length);
  ctx.font = "13px sans-serif";
  items.forEach((it, i) => {
    const y = area.y + i * rowH;
    ctx.fillStyle = OKABE_BLUE; ctx.fillRect(area.x, y + rowH * 0.15, area.w * it.value, rowH * 0.7);
    ctx.fillStyle = "#222"; ctx.textAlign = "right"; ctx.fillText(it.label, area.x - 6, y + rowH * 0.6);
    ctx.textAlign = "left"; ctx.fillText(it.text, area.x + area.w * it.value + 6, y + rowH * 0.6);
  });
  canvas.dataset.rendered = "1";
}

function drawDetections(canvas, classify, duration) {
  const ctx = canvas.getContext("2d"), area = { ...plotArea(canvas), x: 110, w: canvas.width - 120 };
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const dets = classify.detections;
  const labels = [...new Set([...dets.map((d) => d.label), ...classify.top.slice(0, 3).map((t) => t.label)])];
  const rowH = area.h / labels.length;
  ctx.font = "12px sans-serif";
  labels.forEach((l, i) => { ctx.fillStyle = "#222"; ctx.textAlign = "right"; ctx.fillText(l, area.x - 6, area.y + (i + 0.6) * rowH); });
  for (const d of dets) {
    const i = labels.indexOf(d.label), x0 = area.x + area.w * d.start / duration, x1 = area.x + area.w * d.end / duration;
    ctx.fillStyle = OKABE_VERMILLION; ctx.globalAlpha = 0.35 + 0.65 * d.probability;
    ctx.fillRect(x0, area.y + i * rowH + rowH * 0.15, Math.max(2, x1 - x0), rowH * 0.7);
    ctx.globalAlpha = 1; ctx.fillStyle = "#222"; ctx.textAlign = "left";
    ctx.fillText(d.probability.toFixed(2), x0 + 3, area.y + (i + 0.6) * rowH);
  }
  if (!dets.length) { ctx.fillStyle = "#666"; ctx.textAlign = "center"; ctx.fillText("no detection over the threshold", area.x + area.w / 2, area.y + area.h / 2); }
  timeAxis(ctx, area, duration);
  canvas.dataset.rendered = "1";
}

// Frame i of a window lands in output step ceil(cumsum(scores)[i]) - 1 (dataplane/windowing.py).
function compressedView(result) {
  const { classify, compress, mel } = result;
  const T = classify.input_frames, image = [], step = [];
  if (compress) {
    let start = 0, offset = 0;
    for (const w of compress.windows) {
      let cum = 0;
      for (let i = 0; i < w.input_frames; i++) {
        cum += compress.frame_scores[start + i];
        const s = Math.min(w.output_frames - 1, Math.max(0, Math.ceil(cum - 1e-4) - 1));  // 1e-4: windowing.STEP_TOLERANCE
        image.push(w.avgpool[s]); step.push(offset + s);
      }
      start += w.input_frames; offset += w.output_frames;
    }
  } else {
    for (let t = 0; t < T; t++) { step.push(t); if (mel) image.push(mel[t]); }
  }
  const boundaries = [];
  for (let t = 1; t < step.length; t++) if (step[t] !== step[t - 1]) boundaries.push(t);
  return { image: image.length ? image : null, step, boundaries };
}

function render() {
  const r = state.result, c = r.classify, hop = c.frame_hop_seconds, duration = c.input_frames * hop;
  $("top-label").textContent = `${c.top[0].label} (${c.top[0].probability.toFixed(2)})`;
  $("meta").textContent = `${c.model} v${c.version} · ${c.duration_seconds.toFixed(2)} s · ${c.input_frames} frames`;
  $("cap-mel").textContent = state.input.mel ? "Log-mel spectrogram (as sent)" : "Log-mel spectrogram (computed in the browser)";
  drawMap($("chart-mel"), r.mel, duration);
  $("cap-scores").textContent = r.compress ? "DiffRes importance score per input frame" : `Frame score (compressor "${r.kind}": uniform)`;
  drawScores($("chart-scores"), c.frame_scores, duration);
  r.view = compressedView(r);
  $("cap-compressed").textContent = r.compress
    ? `Compressed (avgpool) on its learnt time axis: ${r.compress.output_frames} steps for ${c.input_frames} frames (white lines: step boundaries)`
    : `Fixed resolution ("${r.kind}"): uniform spans, one step per frame`;
  drawMap($("chart-compressed"), r.view.image, duration, r.view.boundaries);
  if (c.windows.length > 1) {
    $("cap-classes").textContent = "Detections over time";
    drawDetections($("chart-classes"), c, duration);
  } else {
    $("cap-classes").textContent = "Top classes";
    drawBars($("chart-classes"), c.top.map((t) => ({ label: t.label, value: t.probability, text: t.probability.toFixed(3) })));
  }
}

// ---- hover -------------------------------------------------------------------------------
function hover(canvas, describe) {
  const tip = $("tooltip");
  canvas.addEventListener("mousemove", (e) => {
    if (!state.result) return;
    const rect = canvas.getBoundingClientRect();
    const x = (e.clientX - rect.left) * canvas.width / rect.width, y = (e.clientY - rect.top) * canvas.height / rect.height;
    const text = describe(x, y);
    if (!text) { tip.hidden = true; return; }
    tip.textContent = text; tip.hidden = false;
    tip.style.left = `${e.clientX + 12}px`; tip.style.top = `${e.clientY + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
}

function frameAt(canvas, x) {
  const area = plotArea(canvas), c = state.result.classify;
  const f = Math.floor((x - area.x) / area.w * c.input_frames);
  return f >= 0 && f < c.input_frames ? f : null;
}

function setupHover() {
  const secs = (f) => (f * state.result.classify.frame_hop_seconds).toFixed(3);
  const band = (canvas, y, F) => { const a = plotArea(canvas); return Math.floor((1 - (y - a.y) / a.h) * F); };
  hover($("chart-mel"), (x, y) => {
    const f = frameAt($("chart-mel"), x), mel = state.result.mel;
    if (f === null || !mel) return null;
    const b = band($("chart-mel"), y, mel[0].length);
    return b >= 0 && b < mel[0].length ? `${secs(f)} s · band ${b} · ${mel[f][b].toFixed(2)}` : `${secs(f)} s`;
  });
  hover($("chart-scores"), (x) => {
    const f = frameAt($("chart-scores"), x);
    return f === null ? null : `${secs(f)} s · frame ${f} · score ${state.result.classify.frame_scores[f].toFixed(4)}`;
  });
  hover($("chart-compressed"), (x) => {
    const f = frameAt($("chart-compressed"), x), v = state.result.view;
    if (f === null || !v) return null;
    const s = v.step[f];
    let a = f, b = f; while (a > 0 && v.step[a - 1] === s) a--; while (b + 1 < v.step.length && v.step[b + 1] === s) b++;
    return `step ${s} · spans ${secs(a)}–${secs(b + 1)} s (${b - a + 1} frames)`;
  });
  hover($("chart-classes"), (x, y) => {
    const c = state.result.classify;
    if (c.windows.length > 1) {
      const a = { ...plotArea($("chart-classes")), x: 110, w: $("chart-classes").width - 120 };
      const t = (x - a.x) / a.w * c.input_frames * c.frame_hop_seconds;
      const d = c.detections.find((d) => t >= d.start && t <= d.end);
      return t >= 0 ? `${t.toFixed(3)} s${d ? ` · ${d.label} ${d.probability.toFixed(3)} (${d.start}–${d.end} s)` : ""}` : null;
    }
    const i = Math.floor((y - 8) / (($("chart-classes").height - 16) / c.top.length));
    return c.top[i] ? `${c.top[i].label}: ${c.top[i].probability.toFixed(4)}` : null;
  });
}

// ---- live mode (WS /stream; only when the server lists it) -------------------------------
// The microphone's samples go out as f32le mono chunks at the AudioContext's rate (the
// server resamples); detections come back as they are found (docs/API.md, "Streaming").
let live = null;
function liveLog(line) {
  const out = $("live-log");
  out.textContent = `${line}\n${out.textContent}`.slice(0, 5000);
}

async function toggleLive() {
  if (live) { stopLive(); return; }
  let media;
  try { media = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch (e) {
    liveLog(`microphone unavailable: ${e.message}`); return;
  }
  const context = new AudioContext();
  const { name, version } = chosenModel();
  const query = new URLSearchParams({ model: name });
  if (version) query.set("version", version);
  const key = localStorage.getItem(KEY_STORE);
  if (key) query.set("api_key", key);
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/stream?${query}`);
  socket.binaryType = "arraybuffer";
  const source = context.createMediaStreamSource(media);
  const tap = context.createScriptProcessor(4096, 1, 1);
  live = { socket, media, context, source, tap, ready: false };
  tap.onaudioprocess = (e) => {
    if (live && live.ready && socket.readyState === WebSocket.OPEN) {
      socket.send(new Float32Array(e.inputBuffer.getChannelData(0)).buffer);
    }
  };
  source.connect(tap);
  tap.connect(context.destination);
  socket.onopen = () => {
    socket.send(JSON.stringify({ type: "start", sample_rate: context.sampleRate,
                                 encoding: "f32le", channels: 1 }));
    $("live-toggle").textContent = "Stop";
  };
  socket.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "ready") { live.ready = true; liveLog(`listening (${m.model} v${m.version})`); }
    else if (m.type === "detection") {
      liveLog(`${m.label}  p=${m.probability.toFixed(2)}  ${m.start.toFixed(2)}-${m.end.toFixed(2)} s`);
    } else if (m.type === "error") liveLog(`${m.code}: ${m.message}`);
    else if (m.type === "end") liveLog(`ended: ${m.seconds.toFixed(1)} s, ${m.detections} detection(s)`);
  };
  socket.onclose = () => { releaseLive(); $("live-toggle").textContent = "Listen"; };
}

function stopLive() {
  if (live.socket.readyState === WebSocket.OPEN) live.socket.send(JSON.stringify({ type: "end" }));
  releaseLive(false);
}

function releaseLive(forget = true) {
  if (!live) return;
  if (!live.released) {  // the microphone stops at once; the socket closes after "end"
    live.released = true;
    live.ready = false;
    live.tap.disconnect(); live.source.disconnect();
    live.media.getTracks().forEach((t) => t.stop());
    live.context.close();
  }
  if (forget) live = null;
}

// ---- start -------------------------------------------------------------------------------
function init() {
  const keyField = $("api-key");
  keyField.value = localStorage.getItem(KEY_STORE) || "";
  keyField.addEventListener("change", () => {
    if (keyField.value) localStorage.setItem(KEY_STORE, keyField.value); else localStorage.removeItem(KEY_STORE);
    start();
  });
  $("model").addEventListener("change", fillVersions);
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) takeFile(e.target.files[0]); });
  $("record").addEventListener("click", toggleRecord);
  $("analyse").addEventListener("click", analyse);
  $("live-toggle").addEventListener("click", toggleLive);
  setupHover();
  start();
}

async function start() {
  showError("");
  try { await loadModels(); await loadFeatures(); setStatus(""); } catch (e) { showError(e.message); }
}

init();

// chexnet viewer: upload an X-ray, show the 14 probabilities as bars, click one for its Grad-CAM heatmap.
// Plain JavaScript, no external resources; the token (when the server asks for one) lives in sessionStorage.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
let current = null; // the File on screen
let imageUrl = null;

function headers() {
  const token = sessionStorage.getItem("chexnet-token");
  return token ? { Authorization: "Bearer " + token } : {};
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!isError);
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return body.error || resp.statusText;
  } catch (e) {
    return resp.status + " " + resp.statusText;
  }
}

async function loadModel() {
  const resp = await fetch("/v1/model", { headers: headers() });
  if (resp.status === 401 || resp.status === 403) {
    $("token-box").hidden = false;
    status(resp.status === 403 ? "Wrong token." : "Enter the server's token.", true);
    return;
  }
  if (resp.status === 503) {
    $("model-name").textContent = "model loading…";
    setTimeout(loadModel, 1000);
    return;
  }
  if (!resp.ok) {
    status(await errorText(resp), true);
    return;
  }
  model = await resp.json();
  $("token-box").hidden = true;
  $("model-name").textContent = model.run + " · " + model.checkpoint + " · " + model.engine;
  if (current) predict(current);
}

function upload(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  return form;
}

function showImage(blob, caption) {
  if (imageUrl) URL.revokeObjectURL(imageUrl);
  imageUrl = URL.createObjectURL(blob);
  $("xray").src = imageUrl;
  $("caption").textContent = caption;
  $("figure").hidden = false;
}

async function showOriginal(file) {
  // the server decodes (DICOM included) exactly as the model sees the file
  const resp = await fetch("/v1/image", { method: "POST", body: upload(file), headers: headers() });
  if (resp.ok) showImage(await resp.blob(), file.name);
}

function renderBars(result) {
  const tbody = $("bars");
  tbody.replaceChildren();
  for (const name of model.labels) {
    const p = result.probabilities[name];
    const threshold = model.thresholds[name];
    const tr = document.createElement("tr");
    tr.className = "finding" + (result.findings.includes(name) ? " above" : "");
    tr.dataset.finding = name;
    const tdName = document.createElement("td");
    tdName.className = "name";
    tdName.textContent = name;
    const tdBar = document.createElement("td");
    tdBar.className = "bar";
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = (100 * p).toFixed(1) + "%";
    const tick = document.createElement("div");
    tick.className = "tick";
    tick.style.left = (100 * threshold).toFixed(1) + "%";
    tick.title = "threshold " + threshold.toFixed(3);
    track.append(fill, tick);
    tdBar.append(track);
    const tdValue = document.createElement("td");
    tdValue.className = "value";
    tdValue.textContent = p.toFixed(3);
    tr.append(tdName, tdValue, tdBar);
    tr.addEventListener("click", () => heatmap(name, tr));
    tbody.append(tr);
  }
  $("results").hidden = false;
}

async function predict(file) {
  current = file;
  if (!model) return;
  status("Predicting " + file.name + "…");
  $("results").hidden = true;
  await showOriginal(file);  // before the bars: a late preview must not replace a heatmap shown since
  const resp = await fetch("/v1/predict", { method: "POST", body: upload(file), headers: headers() });
  if (!resp.ok) {
    status(file.name + ": " + (await errorText(resp)), true);
    return;
  }
  const result = await resp.json();
  renderBars(result);
  const found = result.findings.length ? result.findings.join(", ") : "none above threshold";
  status(file.name + ": " + found + " (" + result.timing_ms.total.toFixed(0) + " ms)");
  document.body.dataset.predicted = file.name;
}

async function heatmap(name, row) {
  if (!current) return;
  if (!model.heatmaps) {
    status("Heatmaps need the torch model; this server runs an ONNX export.", true);
    return;
  }
  for (const r of document.querySelectorAll("tr.finding")) r.classList.remove("active");
  row.classList.add("active");
  status("Computing the " + name + " heatmap…");
  const url = "/v1/heatmap?finding=" + encodeURIComponent(name);
  const resp = await fetch(url, { method: "POST", body: upload(current), headers: headers() });
  if (!resp.ok) {
    status(name + ": " + (await errorText(resp)), true);
    return;
  }
  showImage(await resp.blob(), current.name + " · " + name + " heatmap (p = " +
            Number(resp.headers.get("X-Probability")).toFixed(3) + ")");
  status(name + " heatmap shown; pick another finding or file.");
  document.body.dataset.heatmap = name;
}

function setup() {
  $("file").addEventListener("change", (e) => { if (e.target.files.length) predict(e.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
  });
  $("token-save").addEventListener("click", () => {
    sessionStorage.setItem("chexnet-token", $("token").value.trim());
    loadModel();
  });
  loadModel();
}

setup();

// mnist-stack page: draw a digit (pointer events: mouse, pen, finger) or drop a picture, and see what the model
// reads and what it sees. Plain JavaScript, no build step; every answer comes from the REST API (/docs).
"use strict";

const $ = (id) => document.getElementById(id);
const DEBOUNCE_MS = 120; // a pause this long while drawing asks for a prediction...
const MAX_WAIT_MS = 400; // ...and a long stroke asks at least this often
const MODEL_POLL_MS = 5000; // the model panel looks for a newly swapped-in model this often
const INK = "#111";

const pad = $("pad");
const ctx = pad.getContext("2d");
const state = {
  strokes: [], // each {width, points: [[x, y], ...]}, in units of the pad's side (0..1), so a resize redraws them
  drawing: null, // the stroke being drawn and its pointer id
  timer: 0,
  lastAsked: 0,
  inFlight: 0, // requests on their way
  again: false, // the drawing changed while a request was in flight: ask again when it returns
  strokeEndedAt: null, // performance.now() of a finished stroke whose prediction is not shown yet
  shownSeq: 0,
  seq: 0,
  pictures: 0, // pictures on their way to the service
  model: null, // the version the model panel shows
  mode: "digit", // "digit": Predict, one digit on a square pad; "number": ReadNumber, a line of digits on a strip
  number: null, // the ReadNumber answer on screen, whose boxes are drawn over the pad
  token: sessionStorage.getItem("mnist-token") || "",
  refreshing: false, // a poll of the model panel is on its way
  picture: null, // the File last chosen, dropped or pasted: asked about again once a token is given
};
// For benchmarks and tests: milliseconds from each finished stroke (pointerup) to its prediction on screen, and
// whether an answer is still to come.
window.mnist = {
  strokeLatencies: [],
  busy: () => Boolean(state.drawing || state.timer || state.inFlight || state.again || state.pictures ||
                      state.strokeEndedAt !== null),
  drawing: () => drawingDataUrl(), // the PNG the page sends for the current drawing, as a data URL
};

// ---------------------------------------------------------------------------------------------------------------
// The REST API

// `path` is relative to the page ("v1/predict"), never from the host's root: a reverse proxy may serve the gateway
// under a prefix (https://host/mnist/), which a path from the root (/v1/predict) would leave.
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers);
  if (state.token) headers.Authorization = "Bearer " + state.token;
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (error) {
    // A header fetch cannot send (a token stored before the form checked it): ask again rather than fail forever.
    if (state.token && !TOKEN_PATTERN.test(state.token)) {
      forgetToken();
      askForToken();
      throw new Error("The stored token has characters a header cannot carry; enter the token again.");
    }
    // fetch says only "Failed to fetch": the page's own server (the gateway) did not answer at all.
    throw new Error("The page's server does not answer: is it still running? Try again in a moment.");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON: a proxy's page */ }
  if (!response.ok) {
    const error = new Error(body && body.error ? body.error.message : `HTTP ${response.status}`);
    error.status = response.status;
    if (response.status === 401) askForToken();
    throw error;
  }
  return body;
}

function askForToken() {
  // Focus only as the form appears: the model panel's poll asks again every few seconds, and took the focus
  // from whatever the user was using each time.
  if (!$("token-form").hidden) return;
  $("token-form").hidden = false;
  $("token").focus();
}

// What an HTTP header carries: printable ASCII (the service's tokens are such; inference.security.checked_token).
const TOKEN_PATTERN = /^[\x20-\x7e]+$/;

function forgetToken() {
  state.token = "";
  sessionStorage.removeItem("mnist-token");
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!TOKEN_PATTERN.test(token)) {
    $("token").setCustomValidity("A token is printable ASCII: letters, digits and punctuation, no other characters.");
    $("token").reportValidity();
    return;
  }
  state.token = token;
  sessionStorage.setItem("mnist-token", state.token);
  $("token-form").hidden = true;
  pad.focus(); // the hidden form had the focus, which fell to the page's start
  refreshModel();
  answerAgain();
});

// What was on the pad when the token was asked for is asked about again with it: the refusal stayed on screen, and
// the drawing or picture was never read.
function answerAgain() {
  if (state.strokes.length) {
    setStatus($("status"), "");
    ask(true);
  } else if (state.picture && pictureShown()) {
    predictPicture(state.picture); // read as a number in number mode
  }
}
$("token").addEventListener("input", () => $("token").setCustomValidity(""));

function setStatus(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

// ---------------------------------------------------------------------------------------------------------------
// The pad

function resizePad() {
  const ratio = Math.min(window.devicePixelRatio || 1, 2);
  const width = Math.round(pad.getBoundingClientRect().width * ratio), height = Math.round(width / padAspect());
  if (width > 0 && (width !== pad.width || height !== pad.height)) {
    pad.width = width;
    pad.height = height;
    redraw();
  }
  // The boxes' labels are sized for the pad as shown: an answer that came while the Evaluate tab hid the pad was
  // labelled at a scale of 1 (2 px on a phone), and showing the pad again at the same size did not redraw them.
  if (width > 0) drawBoxes();
}

// The backing store follows devicePixelRatio, which changes without a resize (browser zoom, the window moved to
// another screen): at the old scale the strokes are blurred. A query for the ratio of now fires once, when it stops
// matching, so each change asks anew for the new ratio; resizePad redraws what is drawn.
function watchPixelRatio() {
  matchMedia(`(resolution: ${window.devicePixelRatio || 1}dppx)`).addEventListener("change", () => {
    resizePad();
    watchPixelRatio();
  }, { once: true });
}

// Draw `stroke` on a canvas context `size` pixels high (the pad is square, or in number mode a strip), from its
// point `from` on.
function drawStroke(context, size, stroke, from) {
  const p = stroke.points;
  context.lineCap = context.lineJoin = "round";
  context.strokeStyle = context.fillStyle = INK;
  context.lineWidth = stroke.width * size;
  context.beginPath();
  if (p.length === 1) { // a dot
    context.arc(p[0][0] * size, p[0][1] * size, context.lineWidth / 2, 0, 2 * Math.PI);
    context.fill();
    return;
  }
  context.moveTo(p[Math.max(from - 1, 0)][0] * size, p[Math.max(from - 1, 0)][1] * size);
  for (let i = Math.max(from, 1); i < p.length; i++) context.lineTo(p[i][0] * size, p[i][1] * size);
  context.stroke();
}

function paint(context, size) {
  context.fillStyle = "#fff";
  context.fillRect(0, 0, context.canvas.width, context.canvas.height);
  for (const stroke of state.strokes) drawStroke(context, size, stroke, 0);
}

function redraw() {
  paint(ctx, pad.height);
  updateTools();
}

// A picture on screen: the one chosen in digit mode, or the photo on the strip in number mode.
function pictureShown() {
  return !$("picture-figure").hidden || !$("number-photo").hidden;
}

// Undo takes back a stroke; Clear takes away the strokes and any picture, so it stays usable while one is shown
// (a resize redraws the pad, and disabled it).
const answerRegion = document.querySelector(".answer");

function updateTools() {
  const focused = document.activeElement;
  $("undo").disabled = state.strokes.length === 0;
  $("clear").disabled = state.strokes.length === 0 && !pictureShown();
  // A button that disables itself under the keyboard drops the focus to the page's start: it goes to the pad.
  if (focused && focused.disabled) pad.focus();
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) / box.height, (event.clientY - box.top) / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || state.drawing) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  const width = Number($("stroke").value) / pad.getBoundingClientRect().height;
  const stroke = { width, points: [point(event)] };
  state.strokes.push(stroke);
  state.drawing = { stroke, pointerId: event.pointerId };
  // A picture on screen or on its way gives way to the drawing: its answer, if still to come, is not shown.
  if (pictureShown() || state.pictures) state.shownSeq = ++state.seq;
  $("picture-figure").hidden = true;
  if (!$("number-photo").hidden) clearNumber();
  drawStroke(ctx, pad.height, stroke, 0);
  $("undo").disabled = $("clear").disabled = false;
  // The answer changes many times a stroke (asked while drawing): a screen reader hears it once, when it settles.
  answerRegion.setAttribute("aria-busy", "true");
});

pad.addEventListener("pointermove", (event) => {
  const drawing = state.drawing;
  if (!drawing || event.pointerId !== drawing.pointerId) return;
  const from = drawing.stroke.points.length;
  // A pen or a finger reports more points than one per frame: take them all, for smooth curves.
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) drawing.stroke.points.push(point(e));
  drawStroke(ctx, pad.height, drawing.stroke, from);
  if (state.mode === "digit") askSoon(); // a number is read when a stroke ends: half a digit is no digit
});

function endStroke(event) {
  const drawing = state.drawing;
  if (!drawing || event.pointerId !== drawing.pointerId) return;
  state.drawing = null;
  state.strokeEndedAt = performance.now();
  ask(true).finally(() => { if (!state.drawing) answerRegion.removeAttribute("aria-busy"); }); // at once: finished
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
// Capture lost without a pointerup (another button pressed mid-stroke, the window losing focus): the stroke ends
// there, or the pad would keep drawing with no button down and ignore the next press.
pad.addEventListener("lostpointercapture", endStroke);

$("undo").addEventListener("click", () => {
  state.strokes.pop();
  redraw();
  state.strokes.length ? ask() : clearAnswer();
});
$("clear").addEventListener("click", () => {
  state.strokes = [];
  redraw();
  clearAnswer();
});

// ---------------------------------------------------------------------------------------------------------------
// Predictions: debounced while drawing (one request at a time), and at once when a stroke ends

function askSoon() {
  clearTimeout(state.timer);
  if (performance.now() - state.lastAsked > MAX_WAIT_MS) ask();
  else state.timer = setTimeout(ask, DEBOUNCE_MS);
}

// What is sent: the drawing rendered afresh at EXPORT_SIDE pixels, whatever the pad's size on screen. Five times
// MNIST's 28 pixels is all the image pipeline needs, and a small PNG is encoded, sent and decoded in a fraction of
// the time of a phone's 700-pixel canvas. toDataURL, not toBlob: Chrome encodes a toBlob in idle time, and right
// after an input event there may be none for a second (measured: ~1 s from pointerup).
const EXPORT_SIDE = 140;
const exported = Object.assign(document.createElement("canvas"), { width: EXPORT_SIDE, height: EXPORT_SIDE });

function drawingDataUrl() {
  const width = Math.round(EXPORT_SIDE * padAspect()); // in number mode a strip EXPORT_SIDE pixels high
  if (exported.width !== width) exported.width = width;
  paint(exported.getContext("2d"), EXPORT_SIDE);
  return exported.toDataURL("image/png");
}

function drawingPng() {
  const base64 = drawingDataUrl().split(",")[1];
  return new Blob([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], { type: "image/png" });
}

async function ask(strokeEnded = false) {
  clearTimeout(state.timer);
  state.timer = 0;
  if (!state.strokes.length) { state.strokeEndedAt = null; return; }
  // While drawing, one request at a time (the latest drawing is sent when it returns); a finished stroke does not
  // wait for an answer that cannot include it.
  if (state.inFlight && !strokeEnded) { state.again = true; return; }
  if (strokeEnded) state.again = false; // this request carries the whole drawing
  state.inFlight++;
  state.lastAsked = performance.now();
  const seq = ++state.seq;
  const strokeEndedAt = state.strokeEndedAt; // this request carries every finished stroke
  state.strokeEndedAt = null;
  const slow = waitingNotice(seq);
  try {
    const number = state.mode === "number";
    const result = await api(number ? "v1/read-number" : "v1/predict", {
      method: "POST", headers: { "Content-Type": "image/png" }, body: drawingPng(),
    });
    if (seq > state.shownSeq && state.strokes.length) {
      state.shownSeq = seq;
      number ? showNumber(result, strokeEndedAt) : showPrediction(result, strokeEndedAt);
    }
  } catch (error) {
    // A refusal or a failure replaces the answer on screen, which was read from an earlier drawing; as an answer
    // would, it gives way to anything newer (a later drawing's answer, a picture, a cleared pad).
    if (seq > state.shownSeq && state.strokes.length) {
      state.shownSeq = seq;
      state.mode === "number" ? clearNumber() : blankResult();
      setStatus($("status"), error.message, true);
    }
  } finally {
    clearTimeout(slow);
    state.inFlight--;
    if (state.again && !state.inFlight) { state.again = false; ask(); }
  }
}

// After this long without an answer, the status says the page is waiting: a service that is down takes the
// gateway's whole deadline to say so, and the answer on screen meanwhile is an older drawing's.
const WAITING_MS = 1500;

function waitingNotice(seq) {
  return setTimeout(() => {
    if (seq > state.shownSeq) setStatus($("status"), "Waiting for the service…");
  }, WAITING_MS);
}

// The file's bytes, read before anything is sent: a file that cannot be read (changed since it was chosen, a folder,
// a placeholder of a cloud drive) made fetch fail, which the page took for its server not answering.
async function fileBytes(file) {
  try {
    return await file.arrayBuffer();
  } catch (error) {
    throw new Error(`Could not read ${file.name || "that file"}: it may have changed since it was chosen, or be ` +
      "a folder. Choose it again.");
  }
}

async function predictPicture(file) {
  if (!file) return;
  state.picture = file;
  openTab("draw"); // a picture dropped or pasted on the Evaluate tab is answered where it can be seen
  if (state.mode === "number") return readPicture(file);
  // The latest input wins: this picture's answer is shown only if nothing was drawn, chosen or cleared since.
  const seq = ++state.seq;
  state.strokes = [];
  redraw();
  const picture = $("picture");
  if (picture.src.startsWith("blob:")) URL.revokeObjectURL(picture.src);
  picture.src = URL.createObjectURL(file);
  $("picture-figure").hidden = false;
  updateTools();
  setStatus($("status"), `Reading ${file.name || "the picture"}…`);
  state.pictures++;
  const slow = waitingNotice(seq);
  try {
    const body = await fileBytes(file);
    const result = await api("v1/predict", {
      method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body,
    });
    if (seq > state.shownSeq) {
      state.shownSeq = seq;
      showPrediction(result, null, file.name);
    }
  } catch (error) {
    if (seq > state.shownSeq) {
      state.shownSeq = seq;
      blankResult();
      // The picture stays beside the message when the browser can show it (not a file that is no picture).
      $("picture-figure").hidden = picture.complete && picture.naturalWidth === 0;
      updateTools();
      setStatus($("status"), error.message, true);
    }
  } finally {
    clearTimeout(slow);
    state.pictures--;
  }
}
$("picture").addEventListener("error", () => { $("picture-figure").hidden = true; updateTools(); });

const bars = $("bars");
for (let digit = 0; digit < 10; digit++) {
  const li = document.createElement("li");
  li.innerHTML = `<span>${digit}</span><span class="track"><span class="fill"></span></span>` +
    '<span class="value"></span>';
  bars.append(li);
}

function showPrediction(result, strokeEndedAt, pictureName) {
  const p = result.probabilities;
  const isDigit = result.is_digit !== false;
  $("digit").textContent = isDigit ? String(result.digit) : "Not a digit";
  $("digit").classList.toggle("not-digit", !isDigit);
  $("confidence").textContent = isDigit
    ? `${(100 * p[result.digit]).toFixed(1)} % sure`
    : `this does not look like a digit (digit score ${result.digit_score.toFixed(3)}); ` +
      `the closest digit is ${result.digit}`;
  [...bars.children].forEach((li, digit) => {
    li.classList.toggle("top", digit === result.digit);
    li.querySelector(".fill").style.width = `${(100 * p[digit]).toFixed(1)}%`;
    li.querySelector(".value").textContent = p[digit].toFixed(3);
  });
  if (result.model_input) $("seen").src = result.model_input;
  setStatus($("status"), `${pictureName ? pictureName + ": " : ""}model ${result.model_version}`);
  document.body.dataset.prediction = String(result.digit); // for tests: the digit on screen
  document.body.dataset.isDigit = String(isDigit); // for tests: "false" when "Not a digit" is on screen
  if (strokeEndedAt !== null) {
    // Counted to the start of the next frame: the one that paints the answer.
    requestAnimationFrame(() => window.mnist.strokeLatencies.push(performance.now() - strokeEndedAt));
  }
  if (result.model_version !== state.model) refreshModel();
}

// The empty answer, and no answer still on its way shown (Clear, Undo to nothing, another mode).
function clearResult() {
  blankResult();
  setStatus($("status"), "");
  state.shownSeq = ++state.seq;
}

// The answer's place emptied; answers on their way are still shown when they are the latest input's.
function blankResult() {
  $("digit").textContent = "?";
  $("digit").classList.remove("not-digit");
  $("confidence").textContent = "Draw a digit";
  for (const li of bars.children) {
    li.classList.remove("top");
    li.querySelector(".fill").style.width = "0";
    li.querySelector(".value").textContent = "";
  }
  $("seen").removeAttribute("src");
  $("picture-figure").hidden = true;
  delete document.body.dataset.prediction;
  delete document.body.dataset.isDigit;
  updateTools();
}

// Pictures: the file picker, drag and drop anywhere on the page, and paste.
$("file").addEventListener("change", (event) => {
  predictPicture(event.target.files[0]);
  event.target.value = ""; // the same file again is a new choice
});
document.addEventListener("dragover", (event) => {
  if (![...event.dataTransfer.types].includes("Files")) return;
  event.preventDefault();
  document.body.classList.add("dropping");
});
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) document.body.classList.remove("dropping");
});
document.addEventListener("drop", (event) => {
  document.body.classList.remove("dropping");
  if (!event.dataTransfer.files.length) return;
  event.preventDefault();
  predictPicture(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData ? event.clipboardData.files : [])][0];
  if (!file) return;
  event.preventDefault();
  predictPicture(file);
});

// ---------------------------------------------------------------------------------------------------------------
// The model panel: what is served; refreshed every few seconds and whenever an answer names another model

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "unknown";
}

// "validation 99.60 %, test 99.61 %": the accuracies; every metric the trainer recorded is in the tooltip.
function metricsText(metrics) {
  const names = { val_accuracy: "validation", test_accuracy: "test", train_accuracy: "training" };
  const accuracies = Object.keys(names).filter((key) => key in metrics)
    .map((key) => `${names[key]} ${(100 * metrics[key]).toFixed(2)} %`);
  return accuracies.join(", ") || "no accuracy recorded";
}

async function refreshModel() {
  // One poll at a time: on a service that is down each waits out the gateway's deadline, and overlapping polls
  // from open tabs would hold the gateway's call threads.
  if (state.refreshing) return;
  state.refreshing = true;
  let info;
  try {
    info = await api("v1/model");
  } catch (error) {
    // What was served is not known now: the panel does not go on naming it beside the error.
    $("model").hidden = true;
    state.model = null;
    setStatus($("model-status"), error.message, true);
    return;
  } finally {
    state.refreshing = false;
  }
  if (!info.serving) {
    $("model").hidden = true;
    const failed = info.last_load_error;
    setStatus($("model-status"), failed
      ? `No model can be served: the published model ${failed.version} fails its checks (${failed.reason}). ` +
        "Publish or promote a good one (python -m inference.models)."
      : "No model yet: the service is waiting for the trainer to publish one.", Boolean(failed));
    state.model = null;
    return;
  }
  const changed = state.model !== null && state.model !== info.version;
  state.model = info.version;
  $("model-version").textContent = info.version;
  $("model-arch").textContent = `${info.arch}, ${info.parameter_count.toLocaleString()} parameters`;
  $("model-metrics").textContent = `${metricsText(info.training_metrics)}, epoch ${info.epoch}`;
  $("model-metrics").title = Object.entries(info.training_metrics).map(([k, v]) => `${k} ${v}`).join("\n");
  $("model-trained").textContent = when(info.trained_at);
  $("model-loaded").textContent = when(info.loaded_at);
  $("model").hidden = false;
  setStatus($("model-status"), changed ? "A new model was swapped in." : "");
  if (changed) {
    const card = document.querySelector(".model-card");
    card.classList.remove("updated");
    void card.offsetWidth; // restart the animation
    card.classList.add("updated");
  }
}

setInterval(() => { if (!document.hidden) refreshModel(); }, MODEL_POLL_MS);

// ---------------------------------------------------------------------------------------------------------------
// The Evaluate tab

const TABS = ["draw", "evaluate"];

function selectTab(name) {
  for (const tab of TABS) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`tab-${tab}`).tabIndex = tab === name ? 0 : -1; // one Tab stop for the tab list; arrows move within it
    $(`view-${tab}`).hidden = tab !== name;
  }
  if (name === "draw") resizePad();
}

const MODE_KEY = "mnist-mode";

// What a reload keeps: the address says the tab, and on the Draw tab the mode ("#number"); the tab's session keeps
// the mode too, so that a reload of the Evaluate tab (#evaluate) comes back to a Draw tab in the mode it was in.
function keepPlace() {
  const evaluate = $("tab-evaluate").getAttribute("aria-selected") === "true";
  history.replaceState(null, "", evaluate ? "#evaluate" : state.mode === "number" ? "#number" : "#");
  rememberMode();
}

function rememberMode() {
  sessionStorage.setItem(MODE_KEY, state.mode);
}

function openTab(tab) {
  selectTab(tab);
  keepPlace();
}
for (const tab of TABS) $(`tab-${tab}`).addEventListener("click", () => openTab(tab));
// The tab pattern's keys: the arrows (wrapping), Home and End move to another tab and open it.
document.querySelector("[role=tablist]").addEventListener("keydown", (event) => {
  const at = TABS.findIndex((tab) => $(`tab-${tab}`) === document.activeElement);
  const moves = { ArrowRight: at + 1, ArrowLeft: at - 1 + TABS.length, Home: 0, End: TABS.length - 1 };
  if (at < 0 || !(event.key in moves)) return;
  event.preventDefault();
  const tab = TABS[moves[event.key] % TABS.length];
  openTab(tab);
  $(`tab-${tab}`).focus();
});

const percent = (x) => `${(100 * x).toFixed(2)} %`;

$("run-evaluate").addEventListener("click", async () => {
  const button = $("run-evaluate"), split = $("split").value;
  button.disabled = true;
  setStatus($("eval-status"), `Evaluating on the ${split} split…`);
  try {
    const r = await api("v1/evaluate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ split, heatmap: false }),
    });
    $("accuracy").textContent = percent(r.accuracy);
    $("eval-detail").textContent = `accuracy on ${r.count.toLocaleString()} ${r.split} images, loss ` +
      `${r.loss.toFixed(4)}; model ${r.model_version}, ${r.seconds.toFixed(2)} s on the service`;
    $("per-class").tBodies[0].innerHTML = r.per_class.map((c) =>
      `<tr><th>${c.digit}</th><td>${percent(c.precision)}</td><td>${percent(c.recall)}</td>` +
      `<td>${percent(c.f1)}</td><td>${c.support.toLocaleString()}</td></tr>`).join("");
    renderConfusion(r.confusion);
    $("eval-result").hidden = false;
    setStatus($("eval-status"), "");
  } catch (error) {
    $("eval-result").hidden = true; // the results on screen were another evaluation's
    setStatus($("eval-status"), error.message, true);
  } finally {
    button.disabled = false;
  }
});

function renderConfusion(matrix) {
  // Colour = the share of a true digit's images that got this prediction; square root, so that a handful of
  // mistakes among a thousand images still shows. Styles are set through the DOM: the page's Content Security
  // Policy refuses inline style attributes.
  const body = $("confusion").tBodies[0];
  body.replaceChildren();
  const cell = (tag, text) => { const c = document.createElement(tag); c.textContent = text; return c; };
  const head = body.insertRow();
  head.append(cell("th", ""), ...matrix.map((_, j) => cell("th", String(j))));
  matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    const tr = body.insertRow();
    tr.append(cell("th", String(i)));
    row.forEach((count, j) => {
      const share = Math.sqrt(count / total);
      const td = cell("td", count ? String(count) : "");
      td.style.background = i === j ? `rgba(37, 84, 216, ${share})` : `rgba(214, 69, 40, ${Math.min(1, 3 * share)})`;
      td.title = `true ${i}, predicted ${j}: ${count}`;
      if (share > 0.55) td.className = "dark";
      tr.append(td);
    });
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Number mode: a line of 1-12 digits on a wide strip, read by POST /v1/read-number (gRPC ReadNumber); the page
// shows the number (separators put back), the confidence, each digit's top probability and the 28x28 image the
// model saw, and the box of each digit over the drawing or the picture.

const NUMBER_ASPECT = 3; // the strip is three times as wide as it is high
const SVG = "http://www.w3.org/2000/svg";

function padAspect() {
  return state.mode === "number" ? NUMBER_ASPECT : 1;
}

function setMode(mode) {
  if (mode === state.mode) return;
  state.mode = mode;
  const number = mode === "number";
  document.body.classList.toggle("number", number);
  $(`mode-${mode}`).checked = true;
  pad.setAttribute("aria-label", number ? "Write one number here, digits side by side on one line"
    : "Draw one digit here with a mouse, a pen or a finger");
  $("digit").setAttribute("aria-label", number ? "Number read" : "Predicted digit");
  keepPlace();
  state.strokes = [];
  state.drawing = null;
  answerRegion.removeAttribute("aria-busy"); // set as a stroke began; the stroke dropped here never ends
  resizePad();
  redraw();
  clearAnswer();
}
for (const mode of ["digit", "number"]) $(`mode-${mode}`).addEventListener("change", () => setMode(mode));

// What a digit of a number shows: the digit, or "?" for a mark the model says is no digit at all (a line through
// the number, a box round it), as the client prints it. The page showed such a mark as a digit.
const NOT_A_DIGIT_MARK = "?";
const digitLabel = (d) => (d.is_digit === false ? NOT_A_DIGIT_MARK : String(d.digit));

// "3.14": the digits with the decimal points and commas put back where they were found; "2?26" with a mark that is
// no digit.
function numberText(result) {
  const digits = result.per_digit.length ? result.per_digit.map(digitLabel).join("") : result.digits;
  let text = "", at = 0;
  for (const s of result.separators) {
    text += digits.slice(at, s.position) + s.mark;
    at = s.position;
  }
  return text + digits.slice(at);
}

function showNumber(result, strokeEndedAt, pictureName) {
  const marks = result.per_digit.filter((d) => d.is_digit === false).length;
  // A lone letter or a smiley was "?", and "one mark does not look like a digit", as if a number were there.
  const none = marks > 0 && marks === result.per_digit.length;
  const text = none ? "Not a number" : numberText(result);
  state.number = result;
  $("digit").textContent = text;
  $("confidence").textContent = none ? "nothing in it looks like a digit"
    : `${(100 * result.confidence).toFixed(1)} % sure of every digit` +
      (marks ? `; ${marks === 1 ? "one mark does" : `${marks} marks do`} not look like a digit (${NOT_A_DIGIT_MARK})` : "");
  $("per-digit").replaceChildren(...result.per_digit.map((d) => {
    const li = document.createElement("li");
    const p = d.probabilities[d.digit];
    li.title = (d.is_digit === false ? `not a digit (digit score ${d.digit_score.toFixed(3)}); closest ` : "") +
      `${d.digit}: probability ${p.toFixed(4)}; box ${d.box.width}x${d.box.height} at ${d.box.x},${d.box.y}`;
    if (d.model_input) {
      const img = document.createElement("img");
      img.src = d.model_input;
      img.alt = `what the model saw for ${d.digit}`;
      li.append(img);
    }
    const digit = document.createElement("b");
    digit.textContent = digitLabel(d);
    li.append(digit, d.is_digit === false ? "not a digit" : `${(100 * p).toFixed(1)} %`);
    return li;
  }));
  drawBoxes();
  // Digits and marks that are none apart: "Not a number" over "1 digit" read as a contradiction.
  const digits = result.per_digit.length - marks;
  setStatus($("status"), `${pictureName ? pictureName + ": " : ""}${digits} digit${digits === 1 ? "" : "s"}` +
    `${marks ? `, ${marks} other mark${marks === 1 ? "" : "s"}` : ""}; model ${result.model_version}`);
  document.body.dataset.number = text; // for tests: the number on screen
  if (strokeEndedAt !== null && strokeEndedAt !== undefined) {
    requestAnimationFrame(() => window.mnist.strokeLatencies.push(performance.now() - strokeEndedAt));
  }
  if (result.model_version !== state.model) refreshModel();
}

// The boxes of the number on screen, over the pad: the SVG's viewBox is the picture's pixels (the drawing as sent,
// or the photo), fitted as the photo is (object-fit: contain), so the boxes land on the ink at any size.
function drawBoxes() {
  const svg = $("boxes"), result = state.number;
  svg.replaceChildren();
  if (!result) return;
  svg.setAttribute("viewBox", `0 0 ${result.width} ${result.height}`);
  const shown = svg.getBoundingClientRect();
  const unit = shown.width ? Math.max(result.width / shown.width, result.height / shown.height) : 1; // per CSS px
  const size = 14 * unit;
  const add = (tag, attributes, cls) => {
    const element = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
    element.setAttribute("class", cls);
    svg.append(element);
    return element;
  };
  const box = (b, label, cls) => {
    add("rect", { x: b.x, y: b.y, width: b.width, height: b.height, "vector-effect": "non-scaling-stroke" }, cls);
    // The label above the box, else below it, else inside its top.
    const y = b.y >= size + 2 * unit ? b.y - 3 * unit
      : b.y + b.height + size <= result.height ? b.y + b.height + size : b.y + size;
    add("text", { x: b.x + b.width / 2, y, "font-size": size, "text-anchor": "middle", "stroke-width": 3 * unit },
      cls).textContent = label;
  };
  result.per_digit.forEach((d) => box(d.box, digitLabel(d), d.is_digit === false ? "mark" : "digit"));
  result.separators.forEach((s) => box(s.box, s.mark, "mark"));
}

function clearNumber() {
  state.number = null;
  drawBoxes();
  $("per-digit").replaceChildren();
  const photo = $("number-photo");
  if (photo.src.startsWith("blob:")) URL.revokeObjectURL(photo.src);
  photo.hidden = true;
  photo.removeAttribute("src");
  delete document.body.dataset.number;
  if (state.mode === "number") {
    $("digit").textContent = "?";
    $("confidence").textContent = "Write a number";
  }
  updateTools();
}

function clearAnswer() {
  clearResult();
  clearNumber();
}

// A picture dropped, pasted or chosen in number mode: shown on the strip, its digits' boxes drawn over it.
async function readPicture(file) {
  state.strokes = [];
  redraw();
  clearAnswer();
  const photo = $("number-photo");
  photo.src = URL.createObjectURL(file);
  photo.hidden = false;
  updateTools(); // Clear takes the picture away
  setStatus($("status"), `Reading ${file.name || "the picture"}…`);
  const seq = ++state.seq;
  state.pictures++;
  const slow = waitingNotice(seq);
  try {
    const body = await fileBytes(file);
    const result = await api("v1/read-number", {
      method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body,
    });
    if (seq > state.shownSeq) {
      state.shownSeq = seq;
      showNumber(result, null, file.name);
    }
  } catch (error) {
    if (seq > state.shownSeq) {
      state.shownSeq = seq;
      setStatus($("status"), error.message, true);
    }
  } finally {
    clearTimeout(slow);
    state.pictures--;
  }
}
$("number-photo").addEventListener("error", () => { // not a picture the browser can show: no broken icon
  if ($("number-photo").hasAttribute("src")) { $("number-photo").hidden = true; updateTools(); }
});

// ---------------------------------------------------------------------------------------------------------------

new ResizeObserver(resizePad).observe(pad);
watchPixelRatio();
selectTab(location.hash === "#evaluate" ? "evaluate" : "draw");
// Only a reload takes the mode the tab's session kept: a bookmark or a typed address of /#evaluate opens in digit
// mode, as any page opened afresh does.
const reloaded = performance.getEntriesByType("navigation")[0]?.type === "reload";
const remembered = location.hash === "#evaluate" && reloaded ? sessionStorage.getItem(MODE_KEY) : null;
if (location.hash === "#number" || remembered === "number") setMode("number");
rememberMode(); // the mode this load chose, not one an earlier page in this tab left
redraw();
refreshModel();

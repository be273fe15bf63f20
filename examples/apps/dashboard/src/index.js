// The dashboard: asks the app for its last round every few seconds (nginx proxies
// api/result to the app's "/"), and shows the built-in sample when the app cannot
// be reached, so the page works on its own too.
import { SAMPLE, checkRound, row } from "./format.js";

const RESULT_URL = "api/result";
const EVERY_MS = 3000;
const KEEP_ROWS = 10;

function show(cells) {
  const body = document.querySelector("#results tbody");
  const tr = document.createElement("tr");
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  body.insertBefore(tr, body.firstChild);
  while (body.rows.length > KEEP_ROWS) body.deleteRow(body.rows.length - 1);
}

function status(text) {
  document.getElementById("status").textContent = text;
}

let shownSample = false;

async function poll() {
  try {
    const response = await fetch(RESULT_URL, { cache: "no-store" });
    if (!response.ok) throw new Error(`${RESULT_URL}: HTTP ${response.status}`);
    show(row(checkRound(await response.json()), "app"));
    status(`live from the app, every ${EVERY_MS / 1000} s`);
  } catch (err) {
    status(`the app is not reachable (${err.message}); showing the sample round`);
    if (!shownSample) {
      show(row(SAMPLE, "sample"));
      shownSample = true;
    }
  }
}

poll();
setInterval(poll, EVERY_MS);

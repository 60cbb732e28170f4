// facekd's page: plain fetch() calls to the same /v1 routes any client uses.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "facekd-api-key";

function headers() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

// One call: the JSON body on success, an Error carrying the server's {"error": {code, message}} otherwise.
async function call(method, path, body) {
  const response = await fetch(path, { method, body, headers: headers() });
  let data = null;
  try { data = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const err = (data && data.error) || { code: String(response.status), message: response.statusText };
    const e = new Error(`${response.status} ${err.code}: ${err.message}`);
    e.status = response.status;
    e.code = err.code;
    throw e;
  }
  return data;
}

function say(id, text, kind) {
  const el = $(id);
  el.textContent = text;
  el.className = "status" + (kind ? " " + kind : "");
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

async function showHealth() {
  try {
    const h = await call("GET", "/v1/health");
    $("health").textContent = `Model ${h.model} (${h.embedding_dim}-d embeddings)` +
      (h.api_key_required ? "; this server needs an API key." : "; no API key needed.");
    $("api-key").required = h.api_key_required;
  } catch (e) {
    $("health").textContent = "The server does not answer: " + e.message;
  }
}

async function showPeople() {
  const body = $("people").tBodies[0];
  try {
    const data = await call("GET", "/v1/people?limit=1000");
    body.replaceChildren();
    for (const p of data.people) {
      const row = body.insertRow();
      cell(row, String(p.id));
      cell(row, p.name, "name");
      cell(row, String(p.faces));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.addEventListener("click", async () => {
        if (!confirm(`Remove ${p.name} and their ${p.faces} faces?`)) return;
        try { await call("DELETE", `/v1/people/${p.id}`); } catch (e) { alert(e.message); }
        showPeople();
      });
      row.insertCell().append(remove);
    }
  } catch (e) {
    body.replaceChildren();
    cell(body.insertRow(), e.status === 401 ? "Enter the API key to list people." : e.message);
  }
}

async function enrol(event) {
  event.preventDefault();
  const name = $("enrol-name").value.trim();
  const photos = Array.from($("enrol-photos").files);
  if (!name || !photos.length) { say("enrol-status", "Give a name and at least one photo.", "error"); return; }
  const form = new FormData();
  for (const p of photos) form.append("photos", p, p.name);
  $("enrol-submit").disabled = true;
  say("enrol-status", `Enrolling ${name} (${photos.length} photo${photos.length > 1 ? "s" : ""})…`);
  try {
    let result;
    try {
      const create = new FormData();
      create.append("name", name);
      for (const p of photos) create.append("photos", p, p.name);
      result = await call("POST", "/v1/people", create);
    } catch (e) {
      if (e.code !== "person_exists") throw e;
      // Already enrolled: add these photos to them.
      const people = await call("GET", "/v1/people?limit=1000");
      const person = people.people.find((p) => p.name === name);
      if (!person) throw e;
      result = await call("POST", `/v1/people/${person.id}/faces`, form);
    }
    say("enrol-status", `Enrolled ${result.person.name} (id ${result.person.id}): ${result.person.faces} face(s) stored.`, "ok");
    $("enrol-form").reset();
    showPeople();
  } catch (e) {
    say("enrol-status", e.message, "error");
  } finally {
    $("enrol-submit").disabled = false;
  }
}

async function identify(event) {
  event.preventDefault();
  const photo = $("identify-photo").files[0];
  if (!photo) { say("identify-status", "Choose a photo.", "error"); return; }
  const probe = new FormData();
  probe.append("photo", photo, photo.name);
  probe.append("top_k", $("identify-top-k").value || "5");
  const crop = new FormData();
  crop.append("photo", photo, photo.name);
  $("identify-submit").disabled = true;
  $("result").hidden = true;
  say("identify-status", "Searching…");
  try {
    const [aligned, result] = await Promise.all([call("POST", "/v1/align", crop), call("POST", "/v1/identify", probe)]);
    const img = $("crop");
    img.src = "data:image/png;base64," + aligned.crop_png;
    img.width = 2 * aligned.width;  // shown at twice the model's input size
    img.height = 2 * aligned.height;
    img.dataset.width = String(aligned.width);
    img.dataset.height = String(aligned.height);
    $("identity").textContent = result.identity === null ? "unknown" : result.identity;
    $("identity").dataset.score = String(result.score);
    const thr = result.threshold === null ? "none" : result.threshold.toFixed(3);
    $("identify-detail").textContent = `Top score ${result.score.toFixed(3)}, threshold ${thr} ` +
      `(${result.scoring} face); ${result.gallery_faces} faces searched; face found by ${result.face.detector}.`;
    const body = $("matches").tBodies[0];
    body.replaceChildren();
    result.matches.forEach((m, i) => {
      const row = body.insertRow();
      if (result.person_id !== null && m.person_id === result.person_id) row.className = "identity";
      cell(row, String(i + 1));
      cell(row, m.name, "name");
      cell(row, String(m.person_id));
      cell(row, m.score.toFixed(4), "score").dataset.score = String(m.score);
    });
    if (!result.matches.length) cell(body.insertRow(), "The gallery is empty.");
    $("result").hidden = false;
    say("identify-status", "");
  } catch (e) {
    say("identify-status", e.message, "error");
  } finally {
    $("identify-submit").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", () => { sessionStorage.setItem(KEY_STORE, $("api-key").value.trim()); showPeople(); });
  $("enrol-form").addEventListener("submit", enrol);
  $("identify-form").addEventListener("submit", identify);
  $("people-refresh").addEventListener("click", showPeople);
  showHealth();
  showPeople();
});

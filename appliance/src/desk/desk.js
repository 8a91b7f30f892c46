// hexa front desk. Talks only to /desk/api/* on this origin; builds the page with
// textContent (never HTML strings). Shapes: see appliance/src/consent/mod.rs.
"use strict";

(function () {
  const POLL_MS = 1000;
  // A finished request stays on screen this long unless a new one arrives.
  const RESULT_MS = 120000;
  // The patient's access list hides itself after this long without a touch.
  const SESSION_IDLE_MS = 180000;

  // Resource types in words a patient understands.
  const TYPE_WORDS = {
    AllergyIntolerance: "allergies",
    CarePlan: "care plans",
    Condition: "illnesses and diagnoses",
    Consent: "permissions",
    Device: "consent card records",
    DiagnosticReport: "test reports",
    DocumentReference: "documents and letters",
    Encounter: "hospital and clinic visits",
    EpisodeOfCare: "courses of care",
    Immunization: "vaccinations",
    MedicationAdministration: "medicines given",
    MedicationDispense: "medicines handed out",
    MedicationRequest: "prescriptions",
    MedicationStatement: "medicines taken",
    Observation: "test results",
    Patient: "personal details",
    Procedure: "operations and procedures",
    ServiceRequest: "referrals and test orders",
    AuditEvent: "access log",
    Provenance: "record signatures",
  };

  // What was done, as a phrase around the records' words.
  const ACTION_WORDS = {
    read: (w) => "looked at your " + w,
    vread: (w) => "looked at an earlier version of your " + w,
    "search-type": (w) => "searched your " + w,
    "history-instance": (w) => "looked at the history of your " + w,
    create: (w) => "added new " + w + " to your record",
    update: (w) => "changed your " + w,
    delete: (w) => "deleted some of your " + w,
    transaction: (w) => "changed your " + w,
    operation: (w) => "used your " + w,
  };

  // The client id of the appliance's own work (consent ceremonies, enrolments), and of the
  // patient's own card-tap sessions at this desk.
  const APPLIANCE_CLIENT = "hexa-appliance";
  const SESSION_CLIENT = "patient-session";
  const isOwn = (a) => a.client === APPLIANCE_CLIENT || a.client === SESSION_CLIENT;

  const BASIS_WORDS = {
    author: "they wrote this record themselves",
    patient: "you, at this desk",
    emergency: "an emergency",
    consent: "allowed by your permission",
    public: "public information",
    system: "done by this appliance for its own work",
  };

  const FAILURE_WORDS = {
    "ceremony-timeout": "No card was tapped in time. Nothing was changed.",
    "wrong-credential": "This card is not the patient's enrolled card. Nothing was changed.",
    declined: "The patient declined. Nothing was changed.",
    "not-enrolled": "The patient has no enrolled card. Enrol a card first.",
    cancelled: "The request was cancelled. Nothing was changed.",
    "device-busy": "The reader was busy with another request. Please try again.",
    replay: "The card's answer was refused (it was used before). Nothing was changed.",
    "stale-challenge": "The card answered too late. Nothing was changed.",
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function capital(s) {
    return s ? s.charAt(0).toUpperCase() + s.slice(1) : s;
  }

  function day(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return d.toLocaleDateString("en-GB", { day: "numeric", month: "long", year: "numeric" });
  }

  function dayTime(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return day(iso) + " at " + d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  }

  // "Organization/fac-b" -> its name, or a readable fallback.
  function nameOf(ref, names) {
    if (!ref) return "someone";
    if (names && typeof names[ref] === "string") return names[ref];
    const [type, id] = String(ref).split("/");
    if (type === "Organization") return "the facility with code " + id;
    if (type === "Practitioner") return "the health worker with code " + id;
    return String(ref);
  }

  // ["a", "b", "c"] -> "a, b and c"
  function joinWords(words) {
    if (words.length <= 1) return words.join("");
    return words.slice(0, -1).join(", ") + " and " + words[words.length - 1];
  }

  function typeWords(t) {
    return TYPE_WORDS[t] || t;
  }

  function scopeWords(scope) {
    if (!Array.isArray(scope)) return "All of the patient's health records";
    return capital(joinWords(scope.map(typeWords)));
  }

  // ---- Permission requests -------------------------------------------------------------

  let shownId = null;
  let shownAt = 0;

  function who(terms, names) {
    const g = (terms && terms.grantee) || [];
    const org = g.find((r) => r.startsWith("Organization/"));
    const prac = g.find((r) => r.startsWith("Practitioner/"));
    const orgName = nameOf(org, names);
    return prac ? nameOf(prac, names) + ", of " + orgName : orgName;
  }

  function headline(r) {
    const names = r.names || {};
    const t = r.terms || {};
    const what = Array.isArray(t.scope)
      ? "the patient's " + joinWords(t.scope.map(typeWords))
      : "all of the patient's health records";
    switch (r.kind) {
      case "consent":
        return t.decision === "deny"
          ? "The patient is asked to forbid " + who(t, names) + " to read " + what
          : who(t, names) + (r.state === "pending" ? " asks to read " : " asked to read ") + what;
      case "revocation":
        return "The patient is asked to withdraw the permission of " + who(t, names) + " to read " + what;
      case "enrol-card":
        return r.state === "pending"
          ? "A new consent card is being enrolled for a patient"
          : "Enrolment of a new consent card";
      case "enrol-finger":
        return r.state === "pending"
          ? "A fingerprint is being enrolled for a patient"
          : "Enrolment of a fingerprint";
      default:
        return r.text || "A request";
    }
  }

  function termsList(r) {
    const names = r.names || {};
    const t = r.terms;
    const dl = el("dl", "terms");
    const row = (label, value, code) => {
      dl.appendChild(el("dt", null, label));
      const dd = el("dd", null, value);
      if (code) {
        dd.appendChild(document.createTextNode(" "));
        dd.appendChild(el("span", "code", "(" + code + ")"));
      }
      dl.appendChild(dd);
    };
    if (t) {
      row("Who would read", who(t, names));
      row("What for", capital(t.purposeText || t.purpose), t.purpose);
      row(
        "Which records",
        scopeWords(t.scope),
        Array.isArray(t.scope) ? t.scope.join(", ") : null
      );
      if (t.dataPeriod) {
        const parts = [];
        if (t.dataPeriod.start) parts.push("from " + day(t.dataPeriod.start));
        if (t.dataPeriod.end) parts.push("until " + day(t.dataPeriod.end));
        row("Only records written", parts.join(" "));
      }
      if (t.period && t.period.end) row("Allowed until", day(t.period.end));
      if (t.decision === "deny") row("The patient's choice", "Forbid");
    }
    if (r.askedBy) {
      const by = nameOf(r.askedBy.facility, names);
      row("Asked by", by, r.askedBy.client ? "system " + r.askedBy.client : null);
    }
    row("How to answer", r.method === "fingerprint" ? "Finger on the sensor" : "Tap the consent card");
    return dl;
  }

  function secondsLeft(until) {
    const ms = new Date(until) - Date.now();
    return isNaN(ms) ? null : Math.max(0, Math.round(ms / 1000));
  }

  function progressBox(r) {
    const box = el("p", "progress");
    box.id = "progress";
    const finger = r.method === "fingerprint";
    if (r.state === "pending") {
      const p = (r.progress && r.progress.state) || "waiting";
      let main;
      if (p === "card_present") main = finger ? "Finger detected…" : "Card detected on the reader…";
      else if (p === "signing") main = finger ? "Checking the fingerprint…" : "Checking the card's signature…";
      else main = finger
        ? "Waiting: please place your finger on the sensor."
        : "Waiting: please tap your consent card on the reader.";
      box.appendChild(document.createTextNode(main));
      const left = secondsLeft(r.until);
      if (left !== null) box.appendChild(el("span", "sub", "Time left: " + left + " seconds"));
      return box;
    }
    const res = r.result || {};
    if (r.state === "done") {
      box.classList.add("done");
      let main = "Done.";
      let sub = null;
      if (r.kind === "consent" && r.method === "fingerprint") {
        main = "✓ Fingerprint accepted.";
        sub = "A health worker must now countersign before the permission counts.";
      } else if (r.kind === "consent" && r.terms && r.terms.decision === "deny") {
        main = "✓ Refusal recorded.";
        sub = who(r.terms, r.names) + " may not read these records.";
      } else if (r.kind === "consent") {
        main = "✓ Permission granted.";
        if (r.terms) {
          sub = who(r.terms, r.names) + " may now read these records until " + day(r.terms.period.end) + ".";
        }
      } else if (r.kind === "revocation") {
        main = "✓ Permission withdrawn.";
      } else if (r.kind === "enrol-card") {
        main = "✓ Card enrolled.";
      } else if (r.kind === "enrol-finger") {
        main = "✓ Fingerprint enrolled.";
      }
      box.appendChild(document.createTextNode(main));
      if (sub) box.appendChild(el("span", "sub", sub));
      return box;
    }
    box.classList.add("failed");
    box.appendChild(document.createTextNode("✗ Not done."));
    box.appendChild(el("span", "sub", FAILURE_WORDS[res.code] || res.reason || "The request did not complete."));
    return box;
  }

  function renderCurrent(r) {
    const art = $("current");
    clear(art);
    art.dataset.state = r.state;
    art.dataset.kind = r.kind;
    art.appendChild(el("p", "headline", headline(r)));
    art.appendChild(termsList(r));
    art.appendChild(progressBox(r));
    art.hidden = false;
    $("idle").hidden = true;
  }

  // The outcome of a finished request in a few words.
  function resultWord(r) {
    if (r.kind === "consent" && r.method === "fingerprint") return "waiting for a countersignature";
    if (r.kind === "consent") return r.terms && r.terms.decision === "deny" ? "refusal recorded" : "permission granted";
    if (r.kind === "revocation") return "permission withdrawn";
    return "done";
  }

  function renderRecent(list) {
    const ul = $("recent");
    clear(ul);
    for (const r of list) {
      const state = r.state === "done" ? resultWord(r) : "not done";
      ul.appendChild(el("li", null, dayTime(r.started) + ": " + headline(r) + " (" + state + ")"));
    }
    $("recent-box").hidden = list.length === 0;
  }

  function renderRequests(all) {
    const list = all.filter((r) => r.kind !== "login");
    const pending = list.find((r) => r.state === "pending");
    let current = null;
    if (pending) {
      current = pending;
    } else if (shownId) {
      const prev = list.find((r) => r.id === shownId);
      if (prev && Date.now() - shownAt < RESULT_MS) current = prev;
    }
    if (current) {
      if (current.id !== shownId) {
        shownId = current.id;
        shownAt = Date.now();
      }
      renderCurrent(current);
    } else {
      shownId = null;
      $("current").hidden = true;
      $("idle").hidden = false;
    }
    renderRecent(list.filter((r) => r !== current && r.state !== "pending").slice(0, 10));
  }

  async function poll() {
    try {
      const resp = await fetch("/desk/api/requests", { cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const v = await resp.json();
      renderRequests(Array.isArray(v.requests) ? v.requests : []);
      const c = $("connection");
      c.textContent = "Connected";
      c.classList.remove("lost");
    } catch (e) {
      const c = $("connection");
      c.textContent = "Cannot reach the appliance: retrying…";
      c.classList.add("lost");
    }
    setTimeout(poll, POLL_MS);
  }

  // ---- The patient's access list -------------------------------------------------------

  let idleTimer = null;

  function outcomeCode(v) {
    try {
      return v.issue[0].details.coding[0].code;
    } catch (e) {
      return null;
    }
  }

  function setStatus(text, failed) {
    const s = $("login-status");
    s.textContent = text;
    s.classList.toggle("failed", !!failed);
    s.hidden = !text;
  }

  function recordWords(a) {
    const recs = Array.isArray(a.records) ? a.records : [];
    if (recs.length === 0) return "health record";
    const types = [];
    for (const r of recs) {
      const t = String(r).split("/")[0];
      if (!types.includes(t)) types.push(t);
    }
    return joinWords(types.map(typeWords));
  }

  function accessItem(a, names) {
    const li = el("li");
    if (a.emergency) li.classList.add("emergency");
    if (a.outcome === "failure") li.classList.add("refused");
    if (a.emergency) li.appendChild(el("div", "flag", "EMERGENCY ACCESS"));
    const org = nameOf(a.facility, names);
    const person = a.client === APPLIANCE_CLIENT
      ? "This appliance, at " + org + ","
      : a.client === SESSION_CLIENT
        ? "You, at this front desk,"
        : a.practitioner ? nameOf(a.practitioner, names) + ", of " + org + "," : org;
    const words = recordWords(a);
    const phrase = ACTION_WORDS[a.what] || ((w) => "used your " + w);
    const line =
      a.outcome === "failure"
        ? capital(person) + " tried to reach your " + words + ", and was refused."
        : capital(person) + " " + phrase(words) + ".";
    li.appendChild(el("div", "who", line));
    const facts = [dayTime(a.when)];
    if (a.purposeText) facts.push("for " + a.purposeText);
    const bases = (a.basis || []).filter((b) => b !== "emergency").map((b) => BASIS_WORDS[b] || b);
    if (bases.length) facts.push("reason allowed: " + bases.join(", "));
    li.appendChild(el("div", "when", facts.join(" · ")));
    if (a.emergency) {
      li.appendChild(
        el("div", "why", "Reason they gave: " + (a.justification ? "“" + a.justification + "”" : "none given"))
      );
    }
    return li;
  }

  function renderAccesses(v) {
    const list = Array.isArray(v.accesses) ? v.accesses : [];
    const names = v.names || {};
    const people = list.filter((a) => !isOwn(a));
    const own = list.filter(isOwn);
    const ol = $("access-list");
    clear(ol);
    for (const a of people) ol.appendChild(accessItem(a, names));
    const ownList = $("own-list");
    clear(ownList);
    for (const a of own) ownList.appendChild(accessItem(a, names));
    $("own-count").textContent = String(own.length);
    $("own-box").hidden = own.length === 0;
    const n = people.length;
    const emergencies = people.filter((a) => a.emergency).length;
    let title =
      n === 0
        ? "No health facility has used your record yet."
        : n === 1
          ? "Health facilities used your record once."
          : "Health facilities used your record " + n + " times.";
    if (emergencies === 1) title += " One of them was an emergency.";
    else if (emergencies > 1) title += " " + emergencies + " of them were emergencies.";
    $("accesses-title").textContent = n === 0 ? title : title + " Newest first:";
    $("accesses").hidden = false;
    $("login-box").hidden = true;
  }

  async function logout() {
    clearTimeout(idleTimer);
    idleTimer = null;
    clear($("access-list"));
    clear($("own-list"));
    $("accesses").hidden = true;
    $("login-box").hidden = false;
    setStatus("", false);
    try {
      await fetch("/desk/api/logout", { method: "POST" });
    } catch (e) {
      // The session also ends by itself within minutes.
    }
  }

  function touch() {
    if (idleTimer === null) return;
    clearTimeout(idleTimer);
    idleTimer = setTimeout(logout, SESSION_IDLE_MS);
  }

  async function login() {
    const button = $("login");
    button.disabled = true;
    setStatus("Please tap your consent card on the reader now.", false);
    try {
      const resp = await fetch("/desk/api/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ timeoutSeconds: 60 }),
      });
      const v = await resp.json().catch(() => ({}));
      if (!resp.ok) {
        const code = outcomeCode(v);
        const words =
          code === "wrong-credential"
            ? "This card is not enrolled here. Please ask at the desk."
            : FAILURE_WORDS[code] || "The card could not be read. Please try again.";
        setStatus(words, true);
        return;
      }
      setStatus("Card accepted. Loading your list…", false);
      const list = await fetch("/desk/api/accesses", { cache: "no-store" });
      const lv = await list.json().catch(() => ({}));
      if (!list.ok) {
        setStatus("Your list could not be loaded. Please tap your card again.", true);
        return;
      }
      setStatus("", false);
      renderAccesses(lv);
      idleTimer = setTimeout(logout, SESSION_IDLE_MS);
    } catch (e) {
      setStatus("Cannot reach the appliance. Please try again.", true);
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("click", login);
    $("logout").addEventListener("click", logout);
    document.addEventListener("pointerdown", touch);
    document.addEventListener("keydown", touch);
    poll();
  });
})();

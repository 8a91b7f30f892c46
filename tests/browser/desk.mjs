// Drives hexa's front-desk page (/desk) in Debian's headless chromium through
// playwright-core, against a running appliance with simulated readers. Run by
// appliance/tests/desk_browser.rs, which starts `hexa serve`, registers the clients,
// creates the patient and enrols the card, then passes (environment):
//   HEXA_BASE       http://127.0.0.1:PORT
//   HEXA_TOKEN_A    bearer token of a client of the appliance's own facility (cruds)
//   HEXA_TOKEN_B    bearer token of a client of the grantee facility (read/search)
//   HEXA_GRANTEE    grantee Organization id      HEXA_GRANTEE_NAME  its name
//   HEXA_PATIENT    patient id                   HEXA_CARD          simulated card number
//   HEXA_SHOTS      directory for the screenshots
// Each step is screenshotted and asserted on the visible text. Exit status 0 = pass.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing environment variable ${k}`);
  return v;
};
const BASE = env("HEXA_BASE");
const TOKEN_A = env("HEXA_TOKEN_A");
const TOKEN_B = env("HEXA_TOKEN_B");
const GRANTEE = env("HEXA_GRANTEE");
const GRANTEE_NAME = env("HEXA_GRANTEE_NAME");
const PATIENT = env("HEXA_PATIENT");
const CARD = Number(env("HEXA_CARD"));
const SHOTS = env("HEXA_SHOTS");
const JUSTIFICATION = "Unconscious patient brought in by ambulance, needs allergy history";
// Longest wait for the page to show something (generous: the machine may be loaded).
const WAIT_MS = 30000;

function check(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}

async function api(method, path, { token, body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.Authorization = token;
  if (body !== undefined) h["Content-Type"] = path.startsWith("/fhir") ? "application/fhir+json" : "application/json";
  const r = await fetch(BASE + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status: r.status, json, text };
}

async function sim(path, body) {
  const r = await api("POST", path, { body });
  check(r.status === 201 || r.status === 204, `${path} answered ${r.status}: ${r.text}`);
}

mkdirSync(SHOTS, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "hexa-desk-chromium-"));
const problems = [];
let step = 0;
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 900 },
    locale: "en-GB",
    timezoneId: "UTC",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  // Any script error or policy violation fails the test.
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));

  const body = () => page.locator("body");
  const shot = async (name) => {
    step += 1;
    const file = join(SHOTS, `${String(step).padStart(2, "0")}-${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    console.log(`screenshot ${file}`);
  };
  const waitText = async (text) => {
    await page.getByText(text, { exact: false }).first().waitFor({ state: "visible", timeout: WAIT_MS });
  };
  const visible = async () => (await body().innerText()).replace(/\s+/g, " ");

  // 1. The page, idle.
  const resp = await page.goto(BASE + "/desk");
  check(resp.status() === 200, `GET /desk answered ${resp.status()}`);
  const csp = resp.headers()["content-security-policy"] || "";
  check(csp.includes("default-src 'none'") && csp.includes("script-src 'self'"), `strict CSP: ${csp}`);
  await waitText("No request is waiting.");
  await waitText("Connected");
  await shot("idle");

  // 2. A health worker's system asks for consent through the FHIR API while the page is open.
  const askConsent = () =>
    api("POST", `/fhir/Patient/${PATIENT}/$consent`, {
      token: TOKEN_A,
      body: {
        resourceType: "Parameters",
        parameter: [
          { name: "organization", valueReference: { reference: `Organization/${GRANTEE}` } },
          { name: "purpose", valueCode: "TREAT" },
          { name: "class", valueCode: "Observation" },
          { name: "class", valueCode: "AllergyIntolerance" },
          { name: "periodEnd", valueDateTime: "2027-06-30T00:00:00Z" },
          { name: "dataPeriodStart", valueDateTime: "2024-01-01T00:00:00Z" },
          { name: "timeoutSeconds", valueInteger: 110 },
        ],
      },
    });
  let consent = askConsent();
  await waitText(`${GRANTEE_NAME} asks to read the patient's test results and allergies`);
  await waitText("Waiting: please tap your consent card on the reader.");
  {
    const t = await visible();
    for (const want of [
      `Who would read ${GRANTEE_NAME}`,
      "What for Treatment (TREAT)",
      "Which records Test results and allergies (Observation, AllergyIntolerance)",
      "Only records written from 1 January 2024",
      "Allowed until 30 June 2027",
      "Asked by Kibagabaga District Hospital",
      "How to answer Tap the consent card",
      "Time left:",
    ]) {
      check(t.includes(want), `the request shows "${want}" in: ${t}`);
    }
    check(!t.includes(`Patient/${PATIENT}`), "the page shows no patient identifier");
  }
  await shot("request-waiting-for-card");

  // 3. Someone else's card is tapped: refused, and the page says so.
  const r = await api("POST", "/sim/cards", { body: { model: "ed25519" } });
  check(r.status === 201, `a second card: ${r.text}`);
  await sim("/sim/reader/present", { card: r.json.card });
  const refused = await consent;
  check(refused.status === 403, `a stranger's card is refused: ${refused.status} ${refused.text}`);
  await waitText("✗ Not done.");
  await waitText("This card is not the patient's enrolled card. Nothing was changed.");
  await shot("request-refused-wrong-card");
  await sim("/sim/reader/lift", {});

  // The request is made again; the page shows the new one waiting.
  consent = askConsent();
  await waitText("Waiting: please tap your consent card on the reader.");

  // 4. The patient taps the enrolled card: the page shows the result.
  await sim("/sim/reader/present", { card: CARD });
  const c = await consent;
  check(c.status === 201, `$consent answered ${c.status}: ${c.text}`);
  check(c.json.status === "active", `the consent is active: ${c.text}`);
  await waitText("✓ Permission granted.");
  await waitText(`${GRANTEE_NAME} asked to read the patient's test results and allergies`);
  {
    const t = await visible();
    check(t.includes(`${GRANTEE_NAME} may now read these records until 30 June 2027.`), `granted in words: ${t}`);
  }
  await shot("request-granted");

  // 5. The grantee reads under the consent, and another of its clients in an emergency.
  const read = await api("GET", `/fhir/Observation?patient=${PATIENT}`, {
    token: TOKEN_B,
    headers: { "X-Purpose-Of-Use": "TREAT" },
  });
  check(read.status === 200 && read.json.total === 1, `consented search: ${read.status} ${read.text}`);
  const em = await api("GET", `/fhir/Patient/${PATIENT}`, {
    token: TOKEN_B,
    headers: { "X-Purpose-Of-Use": "ETREAT", "X-Access-Justification": JUSTIFICATION },
  });
  check(em.status === 200, `justified emergency read: ${em.status} ${em.text}`);

  // 6. The patient logs in by tapping the card and sees who accessed the record.
  await sim("/sim/reader/lift", {});
  await page.getByRole("button", { name: "Tap my card to see who read my record" }).click();
  await waitText("Please tap your consent card on the reader now.");
  await shot("login-waiting-for-card");
  await sim("/sim/reader/present", { card: CARD });
  await waitText("EMERGENCY ACCESS");
  {
    const t = await visible();
    for (const want of [
      "Health facilities used your record 4 times. One of them was an emergency. Newest first:",
      "Kibagabaga District Hospital added new test results to your record.",
      `${GRANTEE_NAME} looked at your personal details.`,
      `Reason they gave: “${JUSTIFICATION}”`,
      "for emergency treatment",
      `${GRANTEE_NAME} searched your test results.`,
      "for treatment · reason allowed: allowed by your permission",
      "Your own visits to this desk, and this appliance's own work on your record",
    ]) {
      check(t.includes(want), `the access list shows "${want}" in: ${t}`);
    }
    const flagged = page.locator("#access-list li.emergency");
    check((await flagged.count()) === 1, "exactly one access is flagged as an emergency");
    check((await flagged.innerText()).includes(JUSTIFICATION), "the flagged access carries the justification");
  }
  await shot("patient-access-list");

  // 7. Finished: the list is hidden and the session cookie dropped.
  await page.getByRole("button", { name: "Finished: hide my list" }).click();
  await page.locator("#accesses").waitFor({ state: "hidden", timeout: WAIT_MS });
  await waitText("Tap my card to see who read my record");
  check(problems.length === 0, `no script errors or blocked loads: ${problems.join("; ")}`);
  // (The 401 below is expected; chromium logs it as a console error.)
  const after = await page.evaluate(async () => (await fetch("/desk/api/accesses")).status);
  check(after === 401, `after finishing, the page's session is gone (got ${after})`);
  await shot("finished");
  console.log(`desk browser test passed (${step} screenshots in ${SHOTS})`);
} catch (e) {
  console.error(e && e.stack ? e.stack : String(e));
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

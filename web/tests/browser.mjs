// Browser test of the web client, headless Chromium driven by playwright-core.
//
//   AUTH_URL=http://127.0.0.1:P1 POSTS_URL=http://127.0.0.1:P2 APP_URL=http://127.0.0.1:P3/ \
//     [ADMIN_USER=root ADMIN_PASSWORD=...] [CHROMIUM=/usr/bin/chromium] node web/tests/browser.mjs
//
// The services must allow APP_URL's origin (--cors-allowed-origins) and auth-svc must run with
// --access-token-ttl 3s (the refresh step waits for the access token to expire). Every wait is
// bounded; the whole run takes well under a minute. Saves target/web/screenshot.png.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const screenshotPath = resolve(here, "../../target/web/screenshot.png");
const { AUTH_URL, POSTS_URL, APP_URL, ADMIN_USER, ADMIN_PASSWORD } = process.env;
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const TIMEOUT = 5_000; // for any single wait
const TTL_WAIT = 4_000; // > --access-token-ttl 3s

if (!AUTH_URL || !POSTS_URL || !APP_URL) {
  console.error("browser test: set AUTH_URL, POSTS_URL and APP_URL");
  process.exit(2);
}

const started = Date.now();
let step = "start";
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);
function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"], timeout: 20_000 });
const page = await browser.newPage();
page.setDefaultTimeout(TIMEOUT);
const calls = [];
page.on("request", (req) => {
  const path = new URL(req.url()).pathname;
  if (req.method() === "POST" && /^\/(auth|posts)\.v1\./.test(path)) calls.push(path.split("/").pop());
});
const consoleErrors = [];
page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
page.on("pageerror", (e) => consoleErrors.push(String(e)));
const count = (method) => calls.filter((c) => c === method).length;

const message = page.locator("#message");
async function expectMessage(re) {
  await page.waitForFunction(
    (src) => new RegExp(src).test(document.getElementById("message")?.textContent ?? ""),
    re.source,
    { timeout: TIMEOUT },
  ).catch(async () => {
    throw new Error(`expected message ${re}, got "${await message.textContent()}"`);
  });
}
const postItem = (title) => page.locator("#posts li", { has: page.locator(".title", { hasText: title }) });

async function logIn(username, password) {
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click("#login");
  await page.locator("#me", { hasText: username }).waitFor();
}

async function createPost(title, body) {
  await page.fill("#title", title);
  await page.fill("#body", body);
  await page.click("#create");
  await postItem(title).waitFor();
}

let failed = false;
try {
  const app = new URL(APP_URL);
  app.searchParams.set("auth", AUTH_URL);
  app.searchParams.set("posts", POSTS_URL);
  const username = `web${Date.now().toString(36)}`;
  const password = "correct horse battery staple";

  step = "open the page";
  await page.goto(app.href, { timeout: 10_000 });
  await page.locator("#login-form").waitFor();

  step = "wrong password is shown in words";
  await page.fill("#username", username);
  await page.fill("#password", "not the password at all");
  await page.click("#login");
  await expectMessage(/Wrong username or password/);

  step = "register";
  await page.fill("#password", password);
  await page.click("#register");
  await expectMessage(/created/);
  log(`registered ${username}`);

  step = "log in";
  await logIn(username, password);
  check(!(await page.locator("#users-tab").count()), "a plain user sees the Users tab");
  const stored = await page.evaluate(() => ({ s: { ...sessionStorage }, l: { ...localStorage } }));
  check(Object.values(stored.s).some((v) => v.startsWith("wwrt_")), "no refresh token in sessionStorage");
  check(!JSON.stringify(stored.l).includes("wwrt_") && !JSON.stringify(stored.l).includes("eyJ"), "a token in localStorage");
  check(!JSON.stringify(stored.s).includes("eyJ"), "the access token is in sessionStorage");
  log("logged in");

  step = "create a post and see it";
  const title = `hello ${username}`;
  await createPost(title, "first post from the browser test");
  check((await postItem(title).locator(".meta").textContent()).includes(username), "post's author not shown");
  log("post created and listed");

  step = "delete the post";
  await postItem(title).locator("button.delete").click();
  await postItem(title).waitFor({ state: "detached" });
  await expectMessage(/deleted/);
  log("post deleted");

  step = "paging: 6 posts, 5 per page, More shows the 6th";
  for (let i = 1; i <= 6; i++) await createPost(`page ${i} ${username}`, `post ${i}`);
  // After the last create the list is reloaded from the first page: 5 newest, and a More button.
  await page.waitForFunction(() => document.querySelectorAll("#posts li").length === 5, null, { timeout: TIMEOUT });
  check(await page.locator("#more").isVisible(), "no More button with 6 posts");
  check(!(await postItem(`page 1 ${username}`).count()), "the oldest post is on the first page");
  await page.click("#more");
  await postItem(`page 1 ${username}`).waitFor();
  log("paging works");

  step = "expired access token: the interceptor refreshes and retries";
  const refreshesBefore = count("Refresh");
  const createsBefore = count("CreatePost");
  await page.waitForTimeout(TTL_WAIT);
  const afterExpiry = `after expiry ${username}`;
  await createPost(afterExpiry, "created with an expired access token");
  check(count("Refresh") === refreshesBefore + 1, `expected 1 Refresh, saw ${count("Refresh") - refreshesBefore} (does auth-svc run with --access-token-ttl 3s?)`);
  // The first CreatePost was refused (TOKEN_EXPIRED) and retried once after the Refresh.
  check(count("CreatePost") === createsBefore + 2, `expected CreatePost sent twice, saw ${count("CreatePost") - createsBefore}`);
  check(await page.locator("#me").isVisible(), "sent back to the login form");
  log("create after expiry succeeded through one Refresh");

  step = "concurrent calls with an expired token share one Refresh";
  await page.waitForTimeout(TTL_WAIT);
  const before = count("Refresh");
  const [meBefore, listBefore] = [count("GetMe"), count("ListPosts")];
  await page.click("#reload");
  await expectMessage(/Reloaded/);
  check(count("Refresh") === before + 1, `expected 1 shared Refresh for 2 calls, saw ${count("Refresh") - before}`);
  // Both calls were refused and retried once each.
  check(count("GetMe") === meBefore + 2 && count("ListPosts") === listBefore + 2, "GetMe and ListPosts not each retried once");
  log("two concurrent calls, one Refresh");

  step = "reload of the tab keeps the session (refresh token in sessionStorage)";
  await page.reload();
  await page.locator("#me", { hasText: username }).waitFor();
  await postItem(afterExpiry).waitFor();
  log("session survived a reload");

  step = "session ended elsewhere (TOKEN_REVOKED): back to the login form";
  // Another client ends the session with the refresh token (a raw gRPC-Web Logout from the page's origin).
  const status = await page.evaluate(async (authUrl) => {
    const token = Object.values({ ...sessionStorage }).find((v) => v.startsWith("wwrt_"));
    const field = new TextEncoder().encode(token);
    const msg = [0x0a]; // field 1 (refresh_token), length-delimited
    for (let n = field.length; ; n >>= 7) { if (n < 0x80) { msg.push(n); break; } msg.push((n & 0x7f) | 0x80); }
    msg.push(...field);
    const frame = new Uint8Array([0, 0, 0, 0, msg.length, ...msg]);
    const res = await fetch(`${authUrl}/auth.v1.AuthService/Logout`, {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
      body: frame,
    });
    await res.arrayBuffer();
    return `HTTP ${res.status}`;
  }, AUTH_URL);
  log(`session ended behind the page's back (Logout: ${status})`);
  await page.click("#reload");
  await page.locator("#login-form").waitFor();
  await expectMessage(/session has ended/);
  check(!(await page.evaluate(() => Object.values({ ...sessionStorage }).some((v) => v.startsWith("wwrt_")))), "refresh token kept after TOKEN_REVOKED");
  log("revoked session sent the page back to the login form");
  await logIn(username, password);

  step = "failed Refresh: back to the login form";
  await page.evaluate(() => {
    for (const [k, v] of Object.entries({ ...sessionStorage })) if (v.startsWith("wwrt_")) sessionStorage.setItem(k, "wwrt_not-a-real-refresh-token");
  });
  const refreshesBeforeFail = count("Refresh");
  await page.waitForTimeout(TTL_WAIT);
  await page.click("#reload");
  await page.locator("#login-form").waitFor();
  await expectMessage(/log in again/);
  check(count("Refresh") === refreshesBeforeFail + 1, `expected 1 (failing) Refresh, saw ${count("Refresh") - refreshesBeforeFail}`);
  check(!(await page.evaluate(() => Object.keys({ ...sessionStorage }).length)), "sessionStorage not cleared after a failed Refresh");
  log(`failed Refresh sent the page back to the login form ("${await message.textContent()}")`);
  await logIn(username, password);

  step = "log out";
  const logoutsBefore = count("Logout");
  await page.click("#logout");
  await page.locator("#login-form").waitFor();
  await expectMessage(/Logged out/);
  check(!(await page.evaluate(() => Object.values({ ...sessionStorage }).some((v) => v.startsWith("wwrt_")))), "refresh token left after logout");
  check(count("Logout") === logoutsBefore + 1, "no Logout call");
  log("logged out");

  if (ADMIN_USER && ADMIN_PASSWORD) {
    step = "admin sees the users view";
    await logIn(ADMIN_USER, ADMIN_PASSWORD);
    await page.click("#users-tab");
    await page.locator("#users td.username", { hasText: username }).waitFor();
    log("admin listed users");
    // The admin may delete anyone's post.
    await page.click("#posts-tab");
    await postItem(afterExpiry).locator("button.delete").click();
    await postItem(afterExpiry).waitFor({ state: "detached" });
    log("admin deleted another user's post");
  } else log("ADMIN_USER/ADMIN_PASSWORD not set: users view not checked");

  check(consoleErrors.filter((e) => !/Failed to load resource/.test(e)).length === 0, `console errors: ${consoleErrors.join(" | ")}`);
} catch (err) {
  failed = true;
  console.error(`browser test FAILED at "${step}": ${err.message.split("\n")[0]}`);
  console.error(`calls so far: ${calls.join(", ")}`);
  if (consoleErrors.length) console.error(`page console errors: ${consoleErrors.join(" | ")}`);
} finally {
  try {
    mkdirSync(dirname(screenshotPath), { recursive: true });
    await page.screenshot({ path: screenshotPath, fullPage: true, timeout: TIMEOUT });
    console.log(`screenshot: ${screenshotPath}`);
  } catch (err) {
    console.error(`no screenshot: ${err.message}`);
  }
  await browser.close();
}
const secs = ((Date.now() - started) / 1000).toFixed(1);
if (failed) process.exit(1);
console.log(`browser test passed in ${secs}s (${calls.length} calls, ${count("Refresh")} Refresh)`);

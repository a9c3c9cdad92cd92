// Watchword web client: register, log in, read and write posts, and (for admins) list users.
// Plain DOM, no framework. User-supplied text only ever goes into textContent, never into HTML.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { User } from "./gen/auth/v1/auth_pb.js";
import type { Post } from "./gen/posts/v1/posts_pb.js";
import { describe } from "./errors.js";
import { auth, clearSession, hasRefreshToken, login, logout, onSessionLost, posts } from "./session.js";

const PAGE_SIZE = 5;

const app = document.getElementById("app")!;
const whoami = document.getElementById("whoami")!;
const message = document.getElementById("message")!;

let me: User | null = null;

type Child = Node | string | null | false | undefined;

/** Creates an element with attributes (on* values are listeners) and children. */
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | boolean | EventListener> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else if (value !== false) el.setAttribute(name, value);
  }
  for (const child of children) if (child) el.append(child);
  return el;
}

function say(text: string, isError = false): void {
  message.textContent = text;
  message.className = isError ? "error" : "";
}

/** Runs an action with its button disabled; shows any error in words. */
async function act(button: HTMLButtonElement | null, action: () => Promise<void>): Promise<void> {
  if (button) button.disabled = true;
  try {
    await action();
  } catch (err) {
    // When the session was dropped the login form is already showing its own message.
    if (me) say(describe(err), true);
  } finally {
    if (button) button.disabled = false;
  }
}

function isAdmin(): boolean {
  return me?.roles.includes("admin") ?? false;
}

// ---- logged out ----

function showLogin(): void {
  me = null;
  whoami.replaceChildren();
  const username = h("input", { id: "username", name: "username", autocomplete: "username", required: true });
  const password = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const loginButton = h("button", { id: "login", type: "submit" }, "Log in");
  const registerButton = h("button", { id: "register", type: "button" }, "Register");
  const form = h(
    "form",
    { id: "login-form" },
    h("label", {}, "Username ", username),
    h("label", {}, "Password ", password),
    h("div", {}, loginButton, " ", registerButton),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void act(loginButton, async () => {
      try {
        await login(username.value, password.value);
      } catch (err) {
        say(describe(err), true);
        return;
      }
      password.value = "";
      await enter();
    });
  });
  registerButton.addEventListener("click", () => {
    if (!form.reportValidity()) return;
    void act(registerButton, async () => {
      try {
        const res = await auth.register({ username: username.value, password: password.value });
        say(`Account "${res.user?.username}" created. Now log in.`);
      } catch (err) {
        say(describe(err), true);
      }
    });
  });
  app.replaceChildren(h("h2", {}, "Log in or register"), form);
  username.focus();
}

// ---- logged in ----

/** Loads the caller's account (roles decide what is shown) and shows the posts. */
async function enter(): Promise<void> {
  const res = await auth.getMe({});
  me = res.user ?? null;
  if (!me) throw new Error("GetMe returned no user");
  const logoutButton = h("button", { id: "logout", type: "button" }, "Log out");
  logoutButton.addEventListener("click", () =>
    void act(logoutButton, async () => {
      try {
        await logout();
      } finally {
        showLogin();
        say("Logged out.");
      }
    }),
  );
  const postsTab = h("button", { id: "posts-tab", type: "button", onclick: () => void showPosts() }, "Posts");
  const usersTab = isAdmin() && h("button", { id: "users-tab", type: "button", onclick: () => void showUsers() }, "Users");
  whoami.replaceChildren(
    h("span", { id: "me" }, `${me.username} (${me.roles.join(", ")})`),
    " ",
    postsTab,
    " ",
    usersTab || "",
    " ",
    logoutButton,
  );
  say("");
  await showPosts();
}

function when(post: Post): string {
  return post.createTime ? timestampDate(post.createTime).toLocaleString() : "";
}

function postItem(post: Post, onDeleted: () => void): HTMLLIElement {
  const mine = post.authorId === me?.id;
  const del = (mine || isAdmin()) && h("button", { class: "delete", type: "button" }, "Delete");
  const li = h(
    "li",
    { "data-id": post.id },
    h("strong", { class: "title" }, post.title),
    h("div", { class: "meta" }, `by ${post.authorUsername}, ${when(post)}`),
    h("p", { class: "body" }, post.body),
    del,
  );
  if (del)
    del.addEventListener("click", () =>
      void act(del, async () => {
        await posts.deletePost({ id: post.id });
        li.remove();
        say("Post deleted.");
        onDeleted();
      }),
    );
  return li;
}

/** A random UUID (v4) for CreatePost's request_id; crypto.randomUUID needs a secure context. */
function requestId(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

async function showPosts(): Promise<void> {
  const title = h("input", { id: "title", name: "title", maxlength: "200", required: true });
  const body = h("textarea", { id: "body", name: "body", rows: "3", maxlength: "10000", required: true });
  const create = h("button", { id: "create", type: "submit" }, "Post");
  const form = h("form", { id: "post-form" }, h("label", {}, "Title ", title), h("label", {}, "Text ", body), h("div", {}, create));
  const list = h("ul", { id: "posts", class: "posts" });
  const more = h("button", { id: "more", type: "button", hidden: true }, "More");
  const reload = h("button", { id: "reload", type: "button" }, "Reload");
  let nextPageToken = "";

  const loadPage = async (pageToken: string) => {
    const res = await posts.listPosts({ pageSize: PAGE_SIZE, pageToken });
    if (!pageToken) list.replaceChildren();
    for (const post of res.posts) list.append(postItem(post, () => {}));
    nextPageToken = res.nextPageToken;
    more.hidden = !nextPageToken;
    if (!pageToken && res.posts.length === 0) list.append(h("li", { class: "empty" }, "No posts yet."));
  };

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void act(create, async () => {
      await posts.createPost({ title: title.value, body: body.value, requestId: requestId() });
      title.value = "";
      body.value = "";
      say("Posted.");
      await loadPage("");
    });
  });
  more.addEventListener("click", () => void act(more, () => loadPage(nextPageToken)));
  // Reload asks for the account and the first page at once (two calls in flight together).
  reload.addEventListener("click", () =>
    void act(reload, async () => {
      await Promise.all([auth.getMe({}), loadPage("")]);
      say("Reloaded.");
    }),
  );

  app.replaceChildren(h("h2", {}, "New post"), form, h("h2", {}, "Posts ", reload), list, more);
  await act(null, () => loadPage(""));
}

async function showUsers(): Promise<void> {
  const rows = h("tbody", {});
  const more = h("button", { id: "users-more", type: "button", hidden: true }, "More");
  let nextPageToken = "";
  const loadPage = async (pageToken: string) => {
    const res = await auth.listUsers({ pageSize: 20, pageToken });
    for (const user of res.users)
      rows.append(
        h(
          "tr",
          {},
          h("td", { class: "username" }, user.username),
          h("td", {}, user.roles.join(", ")),
          h("td", {}, user.disabled ? "disabled" : "active"),
          h("td", {}, user.createTime ? timestampDate(user.createTime).toLocaleString() : ""),
        ),
      );
    nextPageToken = res.nextPageToken;
    more.hidden = !nextPageToken;
  };
  more.addEventListener("click", () => void act(more, () => loadPage(nextPageToken)));
  app.replaceChildren(
    h("h2", {}, "Users"),
    h("table", { id: "users" }, h("thead", {}, h("tr", {}, h("th", {}, "Username"), h("th", {}, "Roles"), h("th", {}, "State"), h("th", {}, "Created"))), rows),
    more,
  );
  await act(null, () => loadPage(""));
}

// ---- start ----

onSessionLost((why) => {
  showLogin();
  say(describe(why), true);
});

async function start(): Promise<void> {
  if (hasRefreshToken()) {
    // A reload of this tab: the refresh token survived in sessionStorage; the interceptor refreshes first.
    try {
      await enter();
      return;
    } catch {
      clearSession();
    }
  }
  showLogin();
}

void start();

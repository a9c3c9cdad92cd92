// The session: where the tokens live, and the interceptor that puts the access token on calls,
// refreshes it when it expires, and gives up (back to the login form) when the session is over.
//
// Where the tokens live, and why:
// - The access token is kept in memory only (a variable in this module). It is what every call carries,
//   so it is the token most worth stealing; nothing persists it, and a reload simply refreshes it.
// - The refresh token is kept in sessionStorage. That survives a reload of this tab, is not shared with
//   other tabs, and is gone when the tab closes. It is readable by any script running on this page, so
//   the page loads no third-party script (see the Content-Security-Policy in index.html). An HttpOnly
//   cookie would keep it out of script's reach, but that needs a cookie-setting endpoint, which auth-svc
//   (a gRPC service) does not have. Refresh tokens rotate on every use and a reused one ends the session,
//   which limits what a stolen copy is worth.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "./gen/auth/v1/auth_pb.js";
import { PostsService } from "./gen/posts/v1/posts_pb.js";
import { reasonOf } from "./errors.js";

const REFRESH_KEY = "watchword.refresh_token";

let accessToken = "";
let refreshing: Promise<void> | null = null;
let onLost: (why: unknown) => void = () => {};

/** Called when the session is dropped (revoked, or refresh failed), with the error that ended it. */
export function onSessionLost(handler: (why: unknown) => void): void {
  onLost = handler;
}

export function hasRefreshToken(): boolean {
  return sessionStorage.getItem(REFRESH_KEY) !== null;
}

function store(access: string, refresh: string): void {
  accessToken = access;
  sessionStorage.setItem(REFRESH_KEY, refresh);
}

/** Forgets both tokens. */
export function clearSession(): void {
  accessToken = "";
  refreshing = null;
  sessionStorage.removeItem(REFRESH_KEY);
}

function dropSession(why: unknown): void {
  clearSession();
  onLost(why);
}

// Calls that take no bearer token (they carry credentials or a refresh token in the body).
const NO_BEARER = new Set(["Register", "Login", "Refresh"]);

// Reasons that mean the session is over: only logging in again helps.
const SESSION_OVER = new Set(["TOKEN_REVOKED", "TOKEN_INVALID", "TOKEN_MALFORMED", "USER_DISABLED"]);

/**
 * Exchanges the refresh token for new tokens. Concurrent callers share one in-flight Refresh: refresh
 * tokens rotate, so two Refresh calls with the same token would race (auth-svc forgives that for a few
 * seconds, but one call is right). Rejects, after dropping the session, when the refresh fails.
 */
export function refreshOnce(): Promise<void> {
  if (!refreshing) {
    const current = refreshing = (async () => {
      const refreshToken = sessionStorage.getItem(REFRESH_KEY);
      if (!refreshToken) throw new ConnectError("no refresh token", Code.Unauthenticated);
      const res = await authRaw.refresh({ refreshToken });
      store(res.accessToken, res.refreshToken);
    })()
      .catch((err: unknown) => {
        dropSession(err);
        throw err;
      })
      .finally(() => {
        if (refreshing === current) refreshing = null;
      });
  }
  return refreshing;
}

/**
 * Attaches `authorization: Bearer <access token>` to every call that needs it. On TOKEN_EXPIRED it
 * refreshes once (shared with concurrent calls) and retries the call once; on a reason that means the
 * session is over, or a failed refresh, it drops the session (the page goes back to the login form).
 */
const bearer: Interceptor = (next) => async (req) => {
  if (NO_BEARER.has(req.method.name)) return next(req);
  const send = () => {
    const used = accessToken;
    if (used) req.header.set("authorization", `Bearer ${used}`);
    else req.header.delete("authorization");
    return { used, response: next(req) };
  };
  // After a reload there is a refresh token but no access token yet: get one first.
  if (!accessToken && hasRefreshToken()) await refreshOnce();
  const first = send();
  try {
    return await first.response;
  } catch (err) {
    const reason = reasonOf(err);
    if (reason === "TOKEN_EXPIRED") {
      // Another call may have refreshed already while this one was in flight; then just retry.
      if (accessToken === first.used) await refreshOnce();
      // The session was dropped meanwhile (another call's Refresh failed): nothing to retry with.
      if (!accessToken) throw err;
      try {
        return await send().response;
      } catch (retryErr) {
        if (SESSION_OVER.has(reasonOf(retryErr)) || reasonOf(retryErr) === "TOKEN_EXPIRED") dropSession(retryErr);
        throw retryErr;
      }
    }
    if (SESSION_OVER.has(reason)) dropSession(err);
    throw err;
  }
};

function serviceUrl(param: string, port: number): string {
  const given = new URLSearchParams(location.search).get(param);
  return given ? given.replace(/\/+$/, "") : `http://${location.hostname}:${port}`;
}

export const authUrl = serviceUrl("auth", 50051);
export const postsUrl = serviceUrl("posts", 50052);

const authTransport = createGrpcWebTransport({ baseUrl: authUrl, interceptors: [bearer] });
const postsTransport = createGrpcWebTransport({ baseUrl: postsUrl, interceptors: [bearer] });

export const auth = createClient(AuthService, authTransport);
export const posts = createClient(PostsService, postsTransport);
// Refresh goes around the interceptor, so a failing Refresh never tries to refresh itself.
const authRaw = createClient(AuthService, createGrpcWebTransport({ baseUrl: authUrl }));

/** Logs in and keeps the tokens. */
export async function login(username: string, password: string): Promise<void> {
  const res = await auth.login({ username, password });
  store(res.accessToken, res.refreshToken);
}

/** Ends the session at auth-svc (best effort) and forgets the tokens whatever happens. */
export async function logout(): Promise<void> {
  const refreshToken = sessionStorage.getItem(REFRESH_KEY) ?? "";
  try {
    await authRaw.logout({ refreshToken });
  } finally {
    clearSession();
  }
}

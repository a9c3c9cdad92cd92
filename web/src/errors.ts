// Turning a failed call into words for the person using the page.
//
// Every auth failure carries a google.rpc.ErrorInfo status detail (domain "watchword") whose `reason`
// says what to do about it (see the "Error reasons" table in the repository README). connect-web hands
// status details over undecoded, as {type, value}; the two messages needed here are small enough to
// decode by hand, which spares fetching google/rpc/error_details.proto from a remote module registry.

import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

const ERROR_INFO = "google.rpc.ErrorInfo";
const RETRY_INFO = "google.rpc.RetryInfo";

export interface ErrorInfo {
  reason: string;
  domain: string;
}

/** Decodes ErrorInfo's `reason` (field 1) and `domain` (field 2); `metadata` (3) is skipped. */
function decodeErrorInfo(bytes: Uint8Array): ErrorInfo {
  const r = new BinaryReader(bytes);
  const info: ErrorInfo = { reason: "", domain: "" };
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) info.reason = r.string();
    else if (field === 2 && wireType === WireType.LengthDelimited) info.domain = r.string();
    else r.skip(wireType, field);
  }
  return info;
}

/** Decodes RetryInfo's `retry_delay` (field 1, a google.protobuf.Duration) into seconds. */
function decodeRetryDelay(bytes: Uint8Array): number {
  const r = new BinaryReader(bytes);
  let seconds = 0;
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) {
      const d = new BinaryReader(r.bytes());
      while (d.pos < d.len) {
        const [f, w] = d.tag();
        if (f === 1 && w === WireType.Varint) seconds += Number(d.int64());
        else if (f === 2 && w === WireType.Varint) seconds += d.int32() / 1e9;
        else d.skip(w, f);
      }
    } else r.skip(wireType, field);
  }
  return seconds;
}

/** Raw details as connect-web gives them for an error that came off the wire. */
function rawDetails(err: ConnectError): { type: string; value: Uint8Array }[] {
  return err.details.filter(
    (d): d is { type: string; value: Uint8Array } => "type" in d && typeof d.type === "string" && d.value instanceof Uint8Array,
  );
}

/** The watchword ErrorInfo reason of an error, or "" when it has none. */
export function reasonOf(err: unknown): string {
  if (!(err instanceof ConnectError)) return "";
  for (const d of rawDetails(err)) {
    if (d.type !== ERROR_INFO) continue;
    try {
      const info = decodeErrorInfo(d.value);
      if (info.domain === "watchword") return info.reason;
    } catch {
      // A detail we cannot read says nothing; fall back to the status code.
    }
  }
  return "";
}

function retryDelayOf(err: ConnectError): number {
  for (const d of rawDetails(err)) {
    if (d.type !== RETRY_INFO) continue;
    try {
      return decodeRetryDelay(d.value);
    } catch {
      return 0;
    }
  }
  return 0;
}

const REASON_TEXT: Record<string, string> = {
  TOKEN_MISSING: "Please log in first.",
  TOKEN_MALFORMED: "The page sent a broken sign-in token. Please log in again.",
  TOKEN_EXPIRED: "Your sign-in has expired. Please log in again.",
  TOKEN_REVOKED: "Your session has ended (logged out elsewhere, or ended by an admin). Please log in again.",
  TOKEN_INVALID: "Your sign-in is no longer accepted. Please log in again.",
  USER_DISABLED: "This account is disabled. Contact an administrator.",
  INVALID_CREDENTIALS: "Wrong username or password.",
  ROLE_REQUIRED: "Your account is not allowed to do that.",
  NOT_OWNER: "You can only do that to your own posts.",
  AUTH_UNAVAILABLE: "The sign-in service is not answering. Try again in a moment.",
  ACCOUNT_LOCKED: "Too many failed logins for this account.",
  RATE_LIMITED: "Too many attempts from here.",
  OVERLOADED: "The service is busy.",
};

const CODE_TEXT: Partial<Record<Code, string>> = {
  [Code.AlreadyExists]: "That username is taken.",
  [Code.PermissionDenied]: "You are not allowed to do that.",
  [Code.NotFound]: "Not found (it may have been deleted).",
  [Code.Unavailable]: "The service cannot be reached. Is it running, and does it allow this page's origin?",
  [Code.DeadlineExceeded]: "The service took too long to answer.",
  [Code.Unauthenticated]: "Please log in again.",
};

/** A sentence for the person, from the ErrorInfo reason when there is one, else the status code. */
export function describe(err: unknown): string {
  if (!(err instanceof ConnectError)) return err instanceof Error ? err.message : String(err);
  const reason = reasonOf(err);
  let text = REASON_TEXT[reason];
  if (text) {
    const wait = retryDelayOf(err);
    if (wait > 0) text += ` Try again in ${Math.ceil(wait)} s.`;
    else if (reason === "ACCOUNT_LOCKED" || reason === "RATE_LIMITED" || reason === "OVERLOADED") text += " Try again later.";
    return text;
  }
  // INVALID_ARGUMENT messages name the offending field in plain words; show them as they are.
  if (err.code === Code.InvalidArgument) return err.rawMessage;
  return CODE_TEXT[err.code] ?? `Something went wrong: ${err.rawMessage}`;
}

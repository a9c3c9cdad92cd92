#!/usr/bin/env node
// Calls auth-svc and posts-svc from Node with @grpc/grpc-js, loading ../../proto at run time with
// @grpc/proto-loader (no generated code). Walks the whole flow (register, log in, create, list, get, delete;
// GetMe, refresh, an API key exchanged for a token and revoked, a password change that ends the other
// session, logout) and checks that calls without a valid token fail with UNAUTHENTICATED. Exits non-zero on
// the first unexpected result.
//
//   npm ci --prefix examples/node
//   node examples/node/client.js --auth 127.0.0.1:50051 --posts 127.0.0.1:50052
//
// The addresses may also come from the AUTH_ADDR and POSTS_ADDR environment variables. Over TLS, name the CA
// certificate to trust with --ca (or WATCHWORD_CA), e.g. data/tls/ca.pem of `cargo run -p watchword-dev -- --tls`:
//
//   node examples/node/client.js --ca data/tls/ca.pem
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs, promisify } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const TIMEOUT_MS = 10_000; // for every call

// keepCase keeps field names as in the .proto (access_token, not accessToken). google/protobuf/timestamp.proto
// comes with protobufjs, so only our own folder needs to be on the include path.
const definition = protoLoader.loadSync(['auth/v1/auth.proto', 'posts/v1/posts.proto'], {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const proto = grpc.loadPackageDefinition(definition);

// Turns every unary method of a generated client into a promise-returning function:
// call(client, 'GetPost')(request, metadata) resolves to the response or rejects with a grpc error.
function call(client, method) {
  return (request, metadata = new grpc.Metadata()) =>
    promisify(client[method].bind(client))(request, metadata, { deadline: Date.now() + TIMEOUT_MS });
}

async function expectStatus(code, promise) {
  try {
    await promise;
  } catch (error) {
    assert.equal(error.code, code, `expected status ${code}, got ${error.code}: ${error.details}`);
    console.log(`  -> ${grpc.status[error.code]}: ${error.details}`);
    return;
  }
  assert.fail(`expected status ${grpc.status[code]}, but the call succeeded`);
}

// Repeats a call until it fails with UNAUTHENTICATED: revocations reach every guard within a second.
async function refusedSoon(attempt, withinMs = 2000) {
  const deadline = Date.now() + withinMs;
  for (;;) {
    try {
      await attempt();
    } catch (error) {
      assert.equal(error.code, grpc.status.UNAUTHENTICATED, `expected UNAUTHENTICATED, got ${error.details}`);
      return;
    }
    assert.ok(Date.now() < deadline, `still accepted ${withinMs} ms after it was revoked`);
    await new Promise((resolve) => setTimeout(resolve, 50)); // polling interval, bounded by the deadline
  }
}

function bearer(token) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

function ok(what) {
  console.log(`ok - ${what}`);
}

// TLS trusting the CA certificate in the file `ca`, or plaintext without one.
function channelCredentials(ca) {
  return ca ? grpc.credentials.createSsl(fs.readFileSync(ca)) : grpc.credentials.createInsecure();
}

async function run(authAddr, postsAddr, ca) {
  const credentials = channelCredentials(ca);
  const auth = new proto.auth.v1.AuthService(authAddr, credentials);
  const posts = new proto.posts.v1.PostsService(postsAddr, credentials);
  try {
    // A fresh username each run, so the client also works against long-running services.
    const username = `node-${crypto.randomBytes(4).toString('hex')}`;
    const password = 'correct horse battery staple';

    const { user } = await call(auth, 'Register')({ username, password });
    assert.equal(user.username, username);
    assert.ok(user.roles.includes('user'));
    ok(`Register created ${username}`);

    const login = await call(auth, 'Login')({ username, password });
    assert.equal(login.token_type, 'Bearer');
    ok('Login returned a Bearer token');

    // Every PostsService call carries the token as `authorization` metadata.
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${login.access_token}`);

    const first = (await call(posts, 'CreatePost')({ title: 'First', body: 'Hello from Node' }, metadata)).post;
    const second = (await call(posts, 'CreatePost')({ title: 'Second', body: 'Still here' }, metadata)).post;
    assert.equal(first.author_id, user.id);
    assert.equal(first.author_username, username);
    ok('CreatePost set the author');

    const page = await call(posts, 'ListPosts')({ author_id: user.id }, metadata);
    assert.deepEqual(page.posts.map((p) => p.id), [second.id, first.id]);
    ok('ListPosts returned both posts, newest first');

    const got = (await call(posts, 'GetPost')({ id: first.id }, metadata)).post;
    assert.equal(got.title, 'First');
    assert.equal(got.body, 'Hello from Node');
    ok('GetPost returned the post');

    await call(posts, 'DeletePost')({ id: first.id }, metadata);
    ok('DeletePost deleted the first post');
    await expectStatus(grpc.status.NOT_FOUND, call(posts, 'GetPost')({ id: first.id }, metadata));
    ok('GetPost of the deleted post is NOT_FOUND');

    // Who am I? The account as stored, and the session of the token.
    const me = await call(auth, 'GetMe')({}, metadata);
    assert.equal(me.user.id, user.id);
    assert.equal(me.session.id, login.session_id);
    assert.ok(me.session.current);
    ok('GetMe returned the account and the current session');

    // Refresh: a new access token, and the refresh token rotates.
    const refreshed = await call(auth, 'Refresh')({ refresh_token: login.refresh_token });
    assert.notEqual(refreshed.refresh_token, login.refresh_token);
    const mine = bearer(refreshed.access_token);
    await call(posts, 'ListPosts')({}, mine);
    ok('Refresh rotated the refresh token');

    // An API key for a machine client: exchanged for an ordinary access token, then revoked.
    const created = await call(auth, 'CreateApiKey')({ name: 'node bot' }, mine);
    assert.ok(created.secret.startsWith('wwk_'));
    const exchanged = await call(auth, 'ExchangeApiKey')({ api_key: created.secret });
    const keyed = bearer(exchanged.access_token);
    // GetMe, not Validate: Validate is for other services (over mutual TLS it wants their certificate).
    const keyMe = await call(auth, 'GetMe')({}, keyed);
    assert.equal(keyMe.user.id, user.id);
    assert.equal(keyMe.session.id, created.api_key.id);
    await call(posts, 'ListPosts')({}, keyed);
    const { api_keys } = await call(auth, 'ListApiKeys')({}, mine);
    assert.deepEqual(api_keys.map((k) => k.id), [created.api_key.id]);
    ok('CreateApiKey, ExchangeApiKey and ListApiKeys');
    await call(auth, 'RevokeApiKey')({ id: created.api_key.id }, mine);
    await refusedSoon(() => call(posts, 'ListPosts')({}, keyed));
    await expectStatus(grpc.status.UNAUTHENTICATED, call(auth, 'ExchangeApiKey')({ api_key: created.secret }));
    ok('the revoked key and its token are refused');

    // A password change ends every other session; the caller's goes on.
    const other = await call(auth, 'Login')({ username, password });
    const newPassword = 'a brand new passphrase';
    await call(auth, 'ChangePassword')({ current_password: password, new_password: newPassword }, mine);
    await refusedSoon(() => call(posts, 'ListPosts')({}, bearer(other.access_token)));
    await call(posts, 'ListPosts')({}, mine);
    await call(auth, 'Login')({ username, password: newPassword });
    ok('ChangePassword ended the other session and kept this one');

    // Logout ends this session too.
    await call(auth, 'Logout')({}, mine);
    await refusedSoon(() => call(posts, 'ListPosts')({}, mine));
    ok('Logout ended the session');

    // No token, and a token that is not one: both refused before any handler runs.
    await expectStatus(grpc.status.UNAUTHENTICATED, call(posts, 'ListPosts')({}));
    ok('ListPosts without a token is UNAUTHENTICATED');
    const garbage = new grpc.Metadata();
    garbage.set('authorization', 'Bearer garbage');
    await expectStatus(grpc.status.UNAUTHENTICATED, call(posts, 'ListPosts')({}, garbage));
    ok('ListPosts with a garbage token is UNAUTHENTICATED');
  } finally {
    auth.close();
    posts.close();
  }
  console.log('node client: all checks passed');
}

const { values } = parseArgs({
  options: {
    auth: { type: 'string', default: process.env.AUTH_ADDR || '127.0.0.1:50051' },
    posts: { type: 'string', default: process.env.POSTS_ADDR || '127.0.0.1:50052' },
    ca: { type: 'string', default: process.env.WATCHWORD_CA },
  },
});
run(values.auth, values.posts, values.ca).catch((error) => {
  console.error(`node client failed: ${error.stack || error}`);
  process.exitCode = 1;
});

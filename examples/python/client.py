#!/usr/bin/env python3
"""Calls auth-svc and posts-svc from Python with grpcio.

Stubs are generated from ../../proto with grpcio-tools into a temporary directory at start-up, so nothing
generated is committed. Walks the whole flow (register, log in, the token verified by PyJWT from the keys
auth-svc publishes over HTTP, create, list, get, delete; GetMe, refresh, an API key exchanged for a token and
revoked, a password change that ends the other session, logout) and checks that calls without a valid token
fail with UNAUTHENTICATED. Exits non-zero on the first unexpected result.

    pip install -r examples/python/requirements.txt
    python examples/python/client.py --auth 127.0.0.1:50051 --posts 127.0.0.1:50052

The addresses may also come from the AUTH_ADDR and POSTS_ADDR environment variables. Over TLS, name the CA
certificate to trust with --ca (or WATCHWORD_CA), e.g. data/tls/ca.pem of `cargo run -p watchword-dev -- --tls`:

    python examples/python/client.py --ca data/tls/ca.pem
"""

import argparse
import importlib
import importlib.resources
import json
import os
import secrets
import ssl
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import jwt
from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
PROTO_FILES = ["auth/v1/auth.proto", "posts/v1/posts.proto"]
TIMEOUT = 10  # seconds, for every call


def generate_stubs(out_dir):
    """Compiles the protos into out_dir and makes the generated modules importable."""
    # grpcio-tools ships google/protobuf/*.proto (timestamp.proto among them) in its _proto folder.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--proto_path={well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *PROTO_FILES,
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed with status {status}")
    sys.path.insert(0, str(out_dir))


def expect_status(code, call, *args, **kwargs):
    """Runs call and checks that it fails with the gRPC status code."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as error:
        if error.code() != code:
            sys.exit(f"expected {code}, got {error.code()}: {error.details()}")
        print(f"  -> {error.code().name}: {error.details()}")
        return
    sys.exit(f"expected {code}, but the call succeeded")


def refused_soon(call, request, metadata, within=2.0):
    """Repeats call until it fails with UNAUTHENTICATED; revocations reach every guard within a second."""
    deadline = time.monotonic() + within
    while True:
        try:
            call(request, metadata=metadata, timeout=TIMEOUT)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                sys.exit(f"expected UNAUTHENTICATED, got {error.code()}: {error.details()}")
            return
        if time.monotonic() > deadline:
            sys.exit(f"still accepted {within}s after it was revoked")
        time.sleep(0.05)  # polling interval, bounded by the deadline above


def check(condition, what):
    if not condition:
        sys.exit(f"check failed: {what}")
    print(f"ok - {what}")


def channel(addr, ca):
    """A channel to addr: TLS trusting the CA certificate in the file ca, or plaintext without one."""
    if ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
        return grpc.secure_channel(addr, credentials)
    return grpc.insecure_channel(addr)


def run(auth_addr, posts_addr, ca=None):
    # Imported here because the modules exist only once generate_stubs has run.
    auth_pb2 = importlib.import_module("auth.v1.auth_pb2")
    auth_pb2_grpc = importlib.import_module("auth.v1.auth_pb2_grpc")
    posts_pb2 = importlib.import_module("posts.v1.posts_pb2")
    posts_pb2_grpc = importlib.import_module("posts.v1.posts_pb2_grpc")

    with channel(auth_addr, ca) as auth_channel, channel(posts_addr, ca) as posts_channel:
        auth = auth_pb2_grpc.AuthServiceStub(auth_channel)
        posts = posts_pb2_grpc.PostsServiceStub(posts_channel)

        # A fresh username each run, so the client also works against long-running services.
        username = f"py-{secrets.token_hex(4)}"
        password = "correct horse battery staple"

        user = auth.Register(auth_pb2.RegisterRequest(username=username, password=password), timeout=TIMEOUT).user
        check(user.username == username and "user" in user.roles, f"Register created {username}")

        login = auth.Login(auth_pb2.LoginRequest(username=username, password=password), timeout=TIMEOUT)
        check(login.token_type == "Bearer" and login.access_token, "Login returned a Bearer token")

        # Any JOSE library verifies the token from the keys auth-svc publishes over HTTP (discovery, then
        # jwks_uri), here PyJWT: EdDSA only, issuer and audience checked.
        scheme = "https" if ca else "http"
        tls = ssl.create_default_context(cafile=ca) if ca else None
        with urllib.request.urlopen(
            f"{scheme}://{auth_addr}/.well-known/openid-configuration", timeout=TIMEOUT, context=tls
        ) as response:
            discovery = json.load(response)
        jwks = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False, timeout=TIMEOUT, ssl_context=tls)
        signing_key = jwks.get_signing_key_from_jwt(login.access_token)
        verified = jwt.decode(
            login.access_token,
            signing_key,
            algorithms=["EdDSA"],
            issuer=discovery["issuer"],
            audience="watchword",
        )
        check(verified["sub"] == user.id, "the token verifies with PyJWT against the published jwks_uri")

        # Every PostsService call carries the token as `authorization` metadata.
        metadata = [("authorization", f"Bearer {login.access_token}")]

        first = posts.CreatePost(
            posts_pb2.CreatePostRequest(title="First", body="Hello from Python"), metadata=metadata, timeout=TIMEOUT
        ).post
        second = posts.CreatePost(
            posts_pb2.CreatePostRequest(title="Second", body="Still here"), metadata=metadata, timeout=TIMEOUT
        ).post
        check(first.author_id == user.id and first.author_username == username, "CreatePost set the author")

        page = posts.ListPosts(posts_pb2.ListPostsRequest(author_id=user.id), metadata=metadata, timeout=TIMEOUT)
        check([p.id for p in page.posts] == [second.id, first.id], "ListPosts returned both posts, newest first")

        got = posts.GetPost(posts_pb2.GetPostRequest(id=first.id), metadata=metadata, timeout=TIMEOUT).post
        check(got.title == "First" and got.body == "Hello from Python", "GetPost returned the post")

        posts.DeletePost(posts_pb2.DeletePostRequest(id=first.id), metadata=metadata, timeout=TIMEOUT)
        print("ok - DeletePost deleted the first post")
        expect_status(
            grpc.StatusCode.NOT_FOUND,
            posts.GetPost,
            posts_pb2.GetPostRequest(id=first.id),
            metadata=metadata,
            timeout=TIMEOUT,
        )
        print("ok - GetPost of the deleted post is NOT_FOUND")

        # Who am I? The account as stored, and the session of the token.
        me = auth.GetMe(auth_pb2.GetMeRequest(), metadata=metadata, timeout=TIMEOUT)
        check(me.user.id == user.id and me.session.id == login.session_id and me.session.current, "GetMe")

        # Refresh: a new access token, and the refresh token rotates.
        refreshed = auth.Refresh(auth_pb2.RefreshRequest(refresh_token=login.refresh_token), timeout=TIMEOUT)
        check(refreshed.refresh_token != login.refresh_token, "Refresh rotated the refresh token")
        metadata = [("authorization", f"Bearer {refreshed.access_token}")]
        posts.ListPosts(posts_pb2.ListPostsRequest(), metadata=metadata, timeout=TIMEOUT)

        # An API key for a machine client: exchanged for an ordinary access token, then revoked.
        created = auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(name="python bot"), metadata=metadata, timeout=TIMEOUT)
        check(created.secret.startswith("wwk_") and created.api_key.roles == ["user"], "CreateApiKey")
        exchanged = auth.ExchangeApiKey(auth_pb2.ExchangeApiKeyRequest(api_key=created.secret), timeout=TIMEOUT)
        key_metadata = [("authorization", f"Bearer {exchanged.access_token}")]
        # GetMe, not Validate: Validate is for other services (over mutual TLS it wants their certificate).
        keyed = auth.GetMe(auth_pb2.GetMeRequest(), metadata=key_metadata, timeout=TIMEOUT)
        check(keyed.user.id == user.id and keyed.session.id == created.api_key.id, "ExchangeApiKey")
        posts.ListPosts(posts_pb2.ListPostsRequest(), metadata=key_metadata, timeout=TIMEOUT)
        keys = auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=metadata, timeout=TIMEOUT).api_keys
        check([k.id for k in keys] == [created.api_key.id], "ListApiKeys lists the key")
        auth.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=created.api_key.id), metadata=metadata, timeout=TIMEOUT)
        refused_soon(posts.ListPosts, posts_pb2.ListPostsRequest(), key_metadata)
        print("ok - the revoked key's token is refused")
        expect_status(
            grpc.StatusCode.UNAUTHENTICATED,
            auth.ExchangeApiKey,
            auth_pb2.ExchangeApiKeyRequest(api_key=created.secret),
            timeout=TIMEOUT,
        )

        # A password change ends every other session; the caller's goes on.
        other = auth.Login(auth_pb2.LoginRequest(username=username, password=password), timeout=TIMEOUT)
        other_metadata = [("authorization", f"Bearer {other.access_token}")]
        new_password = "a brand new passphrase"
        auth.ChangePassword(
            auth_pb2.ChangePasswordRequest(current_password=password, new_password=new_password),
            metadata=metadata,
            timeout=TIMEOUT,
        )
        refused_soon(posts.ListPosts, posts_pb2.ListPostsRequest(), other_metadata)
        posts.ListPosts(posts_pb2.ListPostsRequest(), metadata=metadata, timeout=TIMEOUT)
        print("ok - ChangePassword ended the other session and kept this one")
        auth.Login(auth_pb2.LoginRequest(username=username, password=new_password), timeout=TIMEOUT)

        # Logout ends this session too.
        auth.Logout(auth_pb2.LogoutRequest(), metadata=metadata, timeout=TIMEOUT)
        refused_soon(posts.ListPosts, posts_pb2.ListPostsRequest(), metadata)
        print("ok - Logout ended the session")

        # No token, and a token that is not one: both refused before any handler runs.
        expect_status(grpc.StatusCode.UNAUTHENTICATED, posts.ListPosts, posts_pb2.ListPostsRequest(), timeout=TIMEOUT)
        print("ok - ListPosts without a token is UNAUTHENTICATED")
        expect_status(
            grpc.StatusCode.UNAUTHENTICATED,
            posts.ListPosts,
            posts_pb2.ListPostsRequest(),
            metadata=[("authorization", "Bearer garbage")],
            timeout=TIMEOUT,
        )
        print("ok - ListPosts with a garbage token is UNAUTHENTICATED")
    print("python client: all checks passed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auth", default=os.environ.get("AUTH_ADDR", "127.0.0.1:50051"), help="auth-svc host:port")
    parser.add_argument("--posts", default=os.environ.get("POSTS_ADDR", "127.0.0.1:50052"), help="posts-svc host:port")
    parser.add_argument("--ca", default=os.environ.get("WATCHWORD_CA"), help="PEM CA certificate: call over TLS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="watchword-stubs-") as out_dir:
        generate_stubs(out_dir)
        run(args.auth, args.posts, args.ca)


if __name__ == "__main__":
    main()

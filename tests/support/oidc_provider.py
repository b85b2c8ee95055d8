"""A real OpenID provider for the tests, built with Authlib's provider side (Flask): the
authorization code grant with OpenID Connect and PKCE (S256 required), single-use codes,
client_secret_basic, a userinfo endpoint, RP-initiated logout, ID tokens signed RS256 with
a ``kid``. Served over TLS (a test CA, hostname ``localhost``) by werkzeug in a thread.

    with start_provider(tmp) as op:
        op.register_client("deepseekd", "secret", "https://deepseekd.test/auth/oidc/callback")
        op.add_user("dr.lee", "Lee-pass", groups=["clinicians"], amr=["pwd", "otp"])
        ...  # op.issuer, op.ca; op.rotate_key(), op.tamper_next(aud="x"), op.remove_user(...)

The login page is a plain form (``username``, ``password``, a "Sign in" button); a right
password redirects back with ``code`` and ``state``, a wrong one shows "wrong password".
"""

from __future__ import annotations

import hmac
import html
import ssl
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidRequestError,
    TokenMixin,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo, UserInfoEndpoint
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from flask import Flask, Response, jsonify, request
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet, OctKey, RSAKey
from joserfc.jws import JWSRegistry
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from tests.support.slapd import _pki

SCOPES = ("openid", "profile", "email", "groups")
CODE_TTL_S = 600


@dataclass
class User:
    username: str
    password: str
    sub: str
    name: str
    email: str | None
    groups: list[str] | None
    """None: the groups claim is left out altogether."""
    amr: list[str]
    acr: str | None = None


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    secret: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": self.post_logout_redirect_uris}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    username: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    amr: list[str]
    acr: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_amr(self) -> list[str]:
        return self.amr

    def get_acr(self) -> str | None:
        return self.acr


@dataclass
class Token(TokenMixin):  # type: ignore[misc]
    access_token: str
    client: Client
    username: str
    scope: str
    issued_at: float
    expires_in: int
    provider: Provider

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> User | None:
        return self.provider.users.get(self.username)

    def get_client(self) -> Client:
        return self.client


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, app: Flask, provider: Provider) -> None:
        self.provider = provider
        super().__init__(app, query_client=provider.clients.get, save_token=provider.save_token)


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic"]

    @property
    def provider(self) -> Provider:
        return self.server.provider  # type: ignore[no-any-return]

    def save_authorization_code(self, code: str, req: Any) -> None:
        user: User = req.user
        data = req.payload.data
        self.provider.codes[code] = Code(
            code=code,
            client_id=req.client.client_id,
            redirect_uri=req.payload.redirect_uri,
            scope=req.scope,
            username=user.username,
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            amr=list(user.amr),
            acr=user.acr,
        )
        if data.get("nonce"):
            self.provider.nonces.add(data["nonce"])

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        found = self.provider.codes.get(code)
        if found is None or found.client_id != client.client_id:
            return None
        if time.time() > found.auth_time + CODE_TTL_S:
            return None
        return found

    def delete_authorization_code(self, authorization_code: Code) -> None:
        # Single use: the code is gone once tokens were issued for it.
        self.provider.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> User | None:
        return self.provider.users.get(authorization_code.username)


class _S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 required of every client, confidential ones too."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE with code_challenge_method=S256 is required")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier'")
        super().validate_code_verifier(grant, result)


class _OpenIDCode(OpenIDCode):  # type: ignore[misc]
    def __init__(self, provider: Provider) -> None:
        super().__init__(require_nonce=True)
        self.provider = provider

    def exists_nonce(self, nonce: str, req: Any) -> bool:
        return nonce in self.provider.nonces

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return self.provider.signing_key

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        return {"iss": self.provider.issuer, "aud": [client.client_id]}

    def get_encode_header(self, client: Client) -> dict[str, Any]:
        return {"alg": "RS256", "kid": self.provider.signing_key.kid}

    def generate_user_info(self, user: User, scope: str) -> UserInfo:
        claims = self.provider.claims(user, scope)
        return UserInfo(
            {k: v for k, v in claims.items() if k == "sub" or k not in self.provider.id_token_omits}
        )

    def encode_id_token(self, token: dict[str, Any], req: Any) -> str:
        return self.provider.tampered(super().encode_id_token(token, req))


class _UserInfo(UserInfoEndpoint):  # type: ignore[misc]
    def __init__(self, provider: Provider, protector: ResourceProtector) -> None:
        super().__init__(resource_protector=protector)
        self.provider = provider

    def get_issuer(self) -> str:
        return self.provider.issuer

    def generate_user_info(self, user: User, scope: str) -> UserInfo:
        return UserInfo({**self.provider.claims(user, scope), **self.provider.userinfo_overrides})


class _Bearer(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self.provider = provider

    def authenticate_token(self, token_string: str) -> Token | None:
        return self.provider.tokens.get(token_string)


class _EndSession(EndSessionEndpoint):  # type: ignore[misc]
    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self.provider = provider

    def get_server_jwks(self) -> KeySet:
        return self.provider.public_keys()

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        claims = end_session_request.id_token_claims or {}
        self.provider.signed_out.append(str(claims.get("sub", "")))


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # request lines carry codes and tokens


@dataclass
class Provider:
    folder: Path
    port: int = 0
    clients: dict[str, Client] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    codes: dict[str, Code] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    nonces: set[str] = field(default_factory=set)
    published: list[RSAKey] = field(default_factory=list)
    """The keys in the JWKS, oldest first."""
    signing_key: RSAKey = field(default_factory=lambda: _new_key())
    metadata_overrides: dict[str, Any] = field(default_factory=dict)
    """Changes to the discovery document (a None value removes the entry)."""
    id_token_omits: set[str] = field(default_factory=set)
    """Claims left out of ID tokens (userinfo still has them), as some providers do."""
    userinfo_overrides: dict[str, Any] = field(default_factory=dict)
    jwks_requests: int = 0
    signed_out: list[str] = field(default_factory=list)
    """The ``sub`` of each RP-initiated logout with a valid id_token_hint ("" without)."""
    _tamper: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: BaseWSGIServer | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.published.append(self.signing_key)

    @property
    def issuer(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    # -- test API ----------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        secret: str,
        redirect_uri: str,
        post_logout_redirect_uris: list[str] | None = None,
    ) -> Client:
        client = Client(client_id, secret, [redirect_uri], list(post_logout_redirect_uris or []))
        self.clients[client_id] = client
        return client

    def add_user(
        self,
        username: str,
        password: str,
        *,
        groups: list[str] | None = None,
        amr: list[str] | None = None,
        email: str | None = None,
        name: str | None = None,
        acr: str | None = None,
    ) -> User:
        user = User(
            username,
            password,
            sub=str(uuid.uuid4()),
            name=name or username,
            email=email,
            groups=None if groups is None else list(groups),
            amr=list(amr or ["pwd"]),
            acr=acr,
        )
        self.users[username] = user
        return user

    def remove_user(self, username: str) -> None:
        self.users.pop(username, None)

    def rotate_key(self, publish: bool = True) -> RSAKey:
        """Sign from now on with a new key; ``publish=False`` keeps it out of the JWKS."""
        key = _new_key()
        if publish:
            self.published.append(key)
        self.signing_key = key
        return key

    def tamper_next(
        self,
        *,
        exp_offset: int = 0,
        iat_offset: int = 0,
        alg: str | None = None,
        bad_signature: bool = False,
        drop: tuple[str, ...] = (),
        **claims: Any,
    ) -> None:
        """Spoil the next ID token only: shift exp/iat, set or ``drop`` claims, sign with
        ``alg`` "HS256" (a random secret) or "none", or break the signature."""
        with self._lock:
            self._tamper = dict(
                exp_offset=exp_offset,
                iat_offset=iat_offset,
                alg=alg,
                bad_signature=bad_signature,
                drop=drop,
                claims=claims,
            )

    def reset(self) -> None:
        """Undo the knobs: no tampering, plain metadata, a published signing key."""
        with self._lock:
            self._tamper = None
        self.metadata_overrides.clear()
        self.id_token_omits.clear()
        self.userinfo_overrides.clear()
        if self.signing_key not in self.published:
            self.rotate_key()

    # -- used by the endpoints ---------------------------------------------------------------

    def public_keys(self) -> KeySet:
        return KeySet([RSAKey.import_key(k.as_dict(private=False)) for k in self.published])

    def save_token(self, token: dict[str, Any], req: Any) -> None:
        self.tokens[token["access_token"]] = Token(
            token["access_token"],
            req.client,
            req.user.username,
            token.get("scope", ""),
            time.time(),
            int(token.get("expires_in", 3600)),
            self,
        )

    def claims(self, user: User, scope: str) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "sub": user.sub,
            "preferred_username": user.username,
            "name": user.name,
        }
        if user.email and "email" in scope.split():
            claims["email"] = user.email
        if user.groups is not None:
            claims["groups"] = list(user.groups)
        return claims

    def tampered(self, id_token: str) -> str:
        with self._lock:
            spoil, self._tamper = self._tamper, None
        if spoil is None:
            return id_token
        token = jwt.decode(id_token, self.signing_key)
        claims = {k: v for k, v in token.claims.items() if k not in spoil["drop"]}
        claims.update(spoil["claims"])
        claims["exp"] += spoil["exp_offset"]
        claims["iat"] += spoil["iat_offset"]
        alg = spoil["alg"] or "RS256"
        if alg == "none":
            with warnings.catch_warnings():  # joserfc rightly warns about "none"
                warnings.simplefilter("ignore", SecurityWarning)
                out = jwt.encode(
                    {"alg": "none"}, claims, None, registry=JWSRegistry(algorithms=["none"])
                )
        elif alg.startswith("HS"):
            key = OctKey.generate_key(256)
            out = jwt.encode({"alg": alg, "kid": self.signing_key.kid}, claims, key, [alg])
        else:
            out = jwt.encode(token.header, claims, self.signing_key, [alg])
        if spoil["bad_signature"]:
            head, body, sig = out.split(".")
            out = ".".join((head, body, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")))
        return out

    def metadata(self) -> dict[str, Any]:
        base = self.issuer
        meta: dict[str, Any] = {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": f"{base}/jwks",
            "end_session_endpoint": f"{base}/logout",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": list(SCOPES),
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "preferred_username",
                "name",
                "email",
                "groups",
                "amr",
            ],
        }
        for key, value in self.metadata_overrides.items():
            if value is None:
                meta.pop(key, None)
            else:
                meta[key] = value
        return meta

    # -- the server --------------------------------------------------------------------------

    def start(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.folder / "server.pem", self.folder / "server.key")
        self._server = make_server(
            "127.0.0.1",
            self.port,
            _app(self),
            threaded=True,
            ssl_context=ctx,
            request_handler=_QuietHandler,
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="oidc-provider", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


def _new_key() -> RSAKey:
    return RSAKey.generate_key(2048, {"use": "sig", "alg": "RS256"}, auto_kid=True)


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test provider: sign in</title></head>
<body><main><h1>Test provider</h1>{error}
<form method="post" action="{action}">
<p><label>User name <input name="username" autocomplete="username" value="{username}"></label></p>
<p><label>Password
<input name="password" type="password" autocomplete="current-password"></label></p>
<p><button type="submit">Sign in</button></p>
</form></main></body></html>
"""

SIGNED_OUT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Signed out</title></head>
<body><main><h1>Signed out</h1><p>You are signed out of the test provider.</p></main></body>
</html>
"""


def _login_page(error: str = "", username: str = "") -> Response:
    body = LOGIN_PAGE.format(
        action=html.escape(request.full_path),
        username=html.escape(username),
        error=f'<p role="alert">{html.escape(error)}</p>' if error else "",
    )
    return Response(body, status=200, mimetype="text/html")


def _app(op: Provider) -> Flask:
    app = Flask("oidc_provider")
    server = _Server(app, op)
    server.register_grant(_CodeGrant, [_S256Only(), _OpenIDCode(op)])
    protector = ResourceProtector()
    protector.register_token_validator(_Bearer(op))
    server.register_endpoint(_UserInfo(op, protector))
    server.register_endpoint(_EndSession(op))

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Response:
        return jsonify(op.metadata())

    @app.get("/jwks")
    def jwks() -> Response:
        op.jwks_requests += 1
        return jsonify(op.public_keys().as_dict())

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        try:
            if request.method == "GET":
                server.get_consent_grant(end_user=None)
                return _login_page()
            username = request.form.get("username", "")
            user = op.users.get(username)
            if user is None or not hmac.compare_digest(
                request.form.get("password", "").encode(), user.password.encode()
            ):
                return _login_page("wrong password", username)
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        return server.create_authorization_response(grant_user=user, grant=grant)

    @app.post("/token")
    def token() -> Any:
        return server.create_token_response()

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo() -> Any:
        return server.create_endpoint_response("userinfo")

    @app.route("/logout", methods=["GET", "POST"])
    def logout() -> Any:
        try:
            req = server.validate_endpoint_request("end_session")
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        response = server.create_endpoint_response("end_session", req)
        if response is None:
            return Response(SIGNED_OUT_PAGE, mimetype="text/html")
        response.set_data(SIGNED_OUT_PAGE)
        response.mimetype = "text/html"
        return response

    return app


@contextmanager
def start_provider(folder: Path) -> Iterator[Provider]:
    folder.mkdir(parents=True, exist_ok=True)
    _pki(folder)
    op = Provider(folder)
    op.start()
    try:
        yield op
    finally:
        op.stop()

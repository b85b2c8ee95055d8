"""The ONE route table: method, path, handler, who may call it, the body it takes, and how
it answers. It drives the router (``register``), authorization (the auth middleware looks
each request's route up here) and ``/openapi.json``. A test walks every route with every
kind of caller against it, and the auth middleware refuses any route missing from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel

from deepseekd.http import (
    admin,
    audit,
    breakglass,
    conversations,
    feedback,
    finetune,
    health,
    lora,
    metrics,
    notice,
    openapi,
    pages,
    presets,
    review,
    sso,
    users,
)
from deepseekd.http.access import (
    ADMIN,
    AUDITOR,
    BREAKGLASS,
    CHAT,
    CHAT_READ,
    METRICS,
    OPEN,
    SIGNED_IN,
    Access,
)
from deepseekd.http.body import read_json, validate
from deepseekd.http.openai import handlers as openai
from deepseekd.http.openai import responses
from deepseekd.http.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ConversationTitle,
    SimpleChatRequest,
)
from deepseekd.http.openai.responses_protocol import ResponsesRequest
from deepseekd.http.state import AUTH, BODY, QUIET, ROUTES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
THROTTLED_WAIT_S = 1.0
"""How long a sign-in from an address over its attempts waits for its 429."""


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access
    body: type[BaseModel] | None = None
    """Validated before the handler runs; the handler finds it in ``request[BODY]``."""
    body_optional: bool = False
    """No body at all reads as ``{}`` (then validated like any other)."""
    answers: str = "json"
    """What a success looks like: 'json', 'stream' (JSON or server-sent events), 'created'
    (201 JSON), 'html', 'static', 'text', 'report' (JSON, or CSV when asked for) or
    'export' (a download: JSON lines, CSV or FHIR JSON)."""
    query: tuple[tuple[str, str, str], ...] = ()
    """Query parameters for the document: (name, JSON type, description)."""
    sign_in: bool = False
    """A sign-in: an address over its attempts is refused before the body is read, and
    not logged line by line (one warning a minute per address, and a counter)."""


AUDIT_QUERY = (
    ("since", "number", "Events at or after this time (epoch seconds)."),
    ("until", "number", "Events before this time (epoch seconds)."),
    ("actor", "string", "Only events by this user name."),
    ("action", "string", "Only events with this action, e.g. user.create."),
    ("outcome", "string", "Only events with this outcome: ok, denied, error, stopped, locked."),
    ("order", "string", "asc (default): the oldest first; desc: the newest first."),
    ("after_id", "integer", "Paging: events after this id (next_after_id of the last page)."),
    ("before_id", "integer", "Paging newest first: events before this id (next_before_id)."),
    ("limit", "integer", "Events per page, 1 to 1000."),
)
AUDIT_EXPORT_QUERY = (
    ("format", "string", "jsonl (default), csv, fhir (a FHIR R4 Bundle) or fhir-r5."),
    *(q for q in AUDIT_QUERY if q[0] in ("since", "until", "actor", "action", "outcome")),
)
USAGE_QUERY = (
    ("from", "string", "First day, YYYY-MM-DD (default: 29 days before to)."),
    ("to", "string", "Last day, YYYY-MM-DD (default: today in the quota time zone)."),
    ("group", "string", "Only this group (case-insensitive); '(no group)' for users in none."),
    ("format", "string", "json (default) or csv; Accept: text/csv also asks for CSV."),
)
ACCESS_REVIEW_QUERY = (
    ("from", "string", "First day, YYYY-MM-DD (default: 29 days before to)."),
    ("to", "string", "Last day, YYYY-MM-DD (default: today in the quota time zone)."),
    ("dormant_days", "integer", "Days without a sign-in that make dormant, 1-3650."),
    ("format", "string", "json (default) or csv; Accept: text/csv also asks for CSV."),
)
FEEDBACK_QUERY = USAGE_QUERY[:2]
SEARCH_QUERY = (
    ("q", "string", "What to find (2 to 200 characters), case-insensitive."),
    ("limit", "integer", "Results per page, 1 to 50 (default 20)."),
    ("after", "string", "Paging: the response's after (where the scan stopped)."),
)
CONVERSATIONS_QUERY = (
    ("limit", "integer", "Conversations per page, 1 to 200 (default 50)."),
    ("after", "string", "Paging: the id of the last conversation of the previous page."),
)

TABLE: tuple[Route, ...] = (
    # -- open: probes, the document, the pages (their data needs a session), logins
    Route("GET", "/healthz", health.healthz, OPEN),
    Route("GET", "/readyz", health.readyz, OPEN),
    Route("GET", "/openapi.json", openapi.openapi_json, OPEN),  # the shape is no secret
    Route("GET", "/", pages.chat_page, OPEN, answers="html"),
    Route("GET", "/admin", pages.admin_page, OPEN, answers="html"),
    Route("GET", "/static/{filename}", pages.static_file, OPEN, answers="static"),
    Route("GET", "/static/lib/{filename}", pages.static_lib_file, OPEN, answers="static"),
    Route("POST", "/auth/login", pages.login, OPEN, body=pages.WebLogin, sign_in=True),
    Route("POST", "/admin/api/login", admin.login, OPEN, body=admin.LoginBody, sign_in=True),
    Route("GET", "/auth/oidc", sso.sso_config, OPEN),
    Route(
        "GET",
        "/auth/oidc/login",
        sso.start,
        OPEN,
        answers="redirect",
        query=(("to", "string", "Where the session is for: chat (default) or admin."),),
    ),
    Route("GET", "/auth/oidc/callback", sso.callback, OPEN, answers="redirect", sign_in=True),
    Route(
        "POST",
        "/admin/api/login/sso",
        sso.ticket_login,
        OPEN,
        body=sso.TicketLogin,
        sign_in=True,
    ),
    # -- browser sessions
    Route("GET", "/auth/session", pages.session, SIGNED_IN),
    Route("POST", "/auth/logout", pages.logout, SIGNED_IN),
    Route("POST", "/auth/password", pages.change_password, SIGNED_IN, body=pages.PasswordChange),
    Route("POST", "/auth/notice", notice.accept_notice, SIGNED_IN, body=notice.AcceptBody),
    # -- inference (counted against the daily quota)
    Route(
        "POST",
        "/v1/chat/completions",
        openai.chat_completions,
        CHAT,
        body=ChatCompletionRequest,
        answers="stream",
    ),
    Route(
        "POST",
        "/v1/completions",
        openai.completions,
        CHAT,
        body=CompletionRequest,
        answers="stream",
    ),
    Route(
        "POST",
        "/v1/responses",
        responses.responses,
        CHAT,
        body=ResponsesRequest,
        answers="stream",
    ),
    Route("POST", "/chat", openai.simple_chat, CHAT, body=SimpleChatRequest),
    # -- the caller's own data
    Route("GET", "/v1/models", openai.models, CHAT_READ),
    Route("GET", "/v1/presets", presets.list_presets, CHAT_READ),
    Route(
        "GET",
        "/v1/conversations",
        conversations.list_conversations,
        CHAT_READ,
        query=CONVERSATIONS_QUERY,
    ),
    Route(
        "GET",
        "/v1/conversations/search",
        conversations.search_conversations,
        CHAT_READ,
        query=SEARCH_QUERY,
    ),
    Route("DELETE", "/v1/conversations", conversations.delete_all_conversations, CHAT_READ),
    Route("GET", "/v1/conversations/{conversation_id}", conversations.get_conversation, CHAT_READ),
    Route(
        "DELETE",
        "/v1/conversations/{conversation_id}",
        conversations.delete_conversation,
        CHAT_READ,
    ),
    Route(
        "PATCH",
        "/v1/conversations/{conversation_id}",
        conversations.rename_conversation,
        CHAT_READ,
        body=ConversationTitle,
    ),
    Route(
        "PUT",
        "/v1/conversations/{conversation_id}/turns/{turn_id}/feedback",
        feedback.put_feedback,
        CHAT_READ,
        body=feedback.FeedbackBody,
    ),
    Route("GET", "/v1/me/export", conversations.export_me, CHAT_READ),
    Route("GET", "/v1/me/usage", conversations.usage_me, CHAT_READ),
    # -- auditors and scrapers
    Route("GET", "/audit/api/events", audit.events, AUDITOR, query=AUDIT_QUERY),
    Route("GET", "/audit/api/verify", audit.verify, AUDITOR),
    Route(
        "GET",
        "/audit/api/export",
        audit.export,
        AUDITOR,
        answers="export",
        query=AUDIT_EXPORT_QUERY,
    ),
    Route(
        "GET",
        "/audit/api/access-review",
        review.access_review,
        AUDITOR,
        answers="report",
        query=ACCESS_REVIEW_QUERY,
    ),
    Route("GET", "/metrics", metrics.metrics, METRICS, answers="text"),
    # -- admins, with a second factor on every call
    Route("POST", "/admin/api/logout", admin.logout, ADMIN),
    Route("GET", "/admin/api/session", admin.admin_session, ADMIN),
    Route("GET", "/admin/api/status", admin.status, ADMIN),
    Route("GET", "/admin/api/settings", admin.get_settings, ADMIN),
    Route("PATCH", "/admin/api/settings", admin.patch_settings, ADMIN),
    Route("GET", "/admin/api/users", users.list_users, ADMIN, query=users.USERS_QUERY),
    Route(
        "POST",
        "/admin/api/users/import",
        users.import_users,
        ADMIN,
        query=users.IMPORT_QUERY,
    ),
    Route(
        "POST",
        "/admin/api/users",
        admin.create_user,
        ADMIN,
        body=admin.NewUserBody,
        answers="created",
    ),
    Route("PATCH", "/admin/api/users/{name}", admin.set_limits, ADMIN),
    Route("POST", "/admin/api/users/{name}/disable", admin.disable_user, ADMIN),
    Route("POST", "/admin/api/users/{name}/enable", admin.enable_user, ADMIN),
    Route("POST", "/admin/api/users/{name}/unlock", admin.unlock_user, ADMIN),
    Route("POST", "/admin/api/users/{name}/reset-password", admin.reset_password, ADMIN),
    Route("POST", "/admin/api/users/{name}/totp", admin.reset_totp, ADMIN),
    Route("GET", "/admin/api/users/{name}/keys", admin.list_keys, ADMIN),
    Route(
        "POST",
        "/admin/api/users/{name}/keys",
        admin.create_key,
        ADMIN,
        body=admin.NewKeyBody,
        body_optional=True,
        answers="created",
    ),
    Route("DELETE", "/admin/api/keys/{key_id}", admin.revoke_key, ADMIN),
    Route("POST", "/admin/api/users/{name}/erase", admin.erase_user, ADMIN),
    Route("GET", "/admin/api/users/{name}/export", admin.export_user, ADMIN),
    Route("POST", "/admin/api/keys/rotate", admin.rotate_keys, ADMIN),
    Route(
        "GET", "/admin/api/usage", admin.usage_report, ADMIN, answers="report", query=USAGE_QUERY
    ),
    Route("GET", "/admin/api/usage/summary", admin.usage_summary, ADMIN, query=USAGE_QUERY[:3]),
    Route("GET", "/admin/api/notice", notice.get_notice, ADMIN),
    Route("PUT", "/admin/api/notice", notice.put_notice, ADMIN, body=notice.NoticeBody),
    Route("GET", "/admin/api/presets", presets.admin_presets, ADMIN),
    Route("PUT", "/admin/api/presets/{name}", presets.put_preset, ADMIN, body=presets.PresetBody),
    Route("DELETE", "/admin/api/presets/{name}", presets.delete_preset, ADMIN),
    Route(
        "GET",
        "/admin/api/feedback",
        feedback.feedback_report,
        ADMIN,
        query=FEEDBACK_QUERY,
    ),
    # -- break-glass: emergency access (its holder proves a fresh code on start)
    Route("GET", "/admin/api/breakglass", breakglass.overview, BREAKGLASS),
    Route(
        "POST",
        "/admin/api/breakglass",
        breakglass.start,
        BREAKGLASS,
        body=breakglass.StartBody,
        answers="created",
    ),
    Route("POST", "/admin/api/breakglass/{id}/stop", breakglass.stop, BREAKGLASS),
    Route("GET", "/admin/api/breakglass/{id}/conversations", breakglass.conversations, BREAKGLASS),
    Route(
        "GET",
        "/admin/api/breakglass/{id}/conversations/{conversation_id}",
        breakglass.conversation,
        BREAKGLASS,
    ),
    Route(
        "GET",
        "/audit/api/breakglass",
        breakglass.reviews,
        AUDITOR,
        query=(("status", "string", "unreviewed (default, oldest first) or all."),),
    ),
    Route(
        "POST",
        "/audit/api/breakglass/{id}/review",
        breakglass.review,
        AUDITOR,
        body=breakglass.ReviewBody,
    ),
    Route("GET", "/admin/api/lora", lora.list_adapters, ADMIN),
    Route(
        "POST", "/admin/api/lora", lora.load_adapter, ADMIN, body=lora.LoadBody, answers="created"
    ),
    Route("DELETE", "/admin/api/lora/{name}", lora.unload_adapter, ADMIN),
    Route("GET", "/admin/api/finetune/datasets", finetune.list_datasets, ADMIN),
    Route(
        "POST",
        "/admin/api/finetune/datasets",
        finetune.import_dataset,
        ADMIN,
        body=finetune.DatasetBody,
        answers="created",
    ),
    Route(
        "DELETE",
        "/admin/api/finetune/datasets/{name}",
        finetune.delete_dataset,
        ADMIN,
        query=(("version", "integer", "Only this version (default: every version)."),),
    ),
    Route("GET", "/admin/api/finetune/jobs", finetune.list_jobs, ADMIN),
    Route("GET", "/admin/api/finetune/jobs/{id}", finetune.get_job, ADMIN),
    Route(
        "POST",
        "/admin/api/finetune/jobs/{id}/promote",
        finetune.promote,
        ADMIN,
        body=finetune.PromoteBody,
        answers="created",
    ),
    Route("GET", "/admin/api/finetune/releases", finetune.list_releases, ADMIN),
    Route(
        "POST",
        "/admin/api/finetune/releases/{name}/rollback",
        finetune.rollback,
        ADMIN,
        body=finetune.RollbackBody,
        body_optional=True,
    ),
)

BY_KEY: dict[tuple[str, str], Route] = {(r.method, r.path): r for r in TABLE}
ACCESS: dict[tuple[str, str], Access] = {k: r.access for k, r in BY_KEY.items()}
"""Who may call what, by (method, canonical path)."""
BODIES: dict[tuple[str, str], type[BaseModel]] = {
    k: r.body for k, r in BY_KEY.items() if r.body is not None
}
"""Routes whose JSON body a pydantic model validates."""


def access_for(method: str, canonical: str) -> Access | None:
    return ACCESS.get(("GET" if method == "HEAD" else method, canonical))


def _with_body(route: Route) -> Handler:
    """The route's handler, after its body is read and validated (when it takes one)."""
    model = route.body
    if model is None:
        return route.handler

    async def handler(request: web.Request) -> web.StreamResponse:
        if route.sign_in:
            refused = request.app[AUTH].throttle.over(request.remote or "unknown")
            if refused is not None:
                request[QUIET] = True
                # A tarpit: a flooding address waits before each refusal, so it cannot keep
                # the event loop busy answering it (a sleeping request costs nothing).
                await asyncio.sleep(THROTTLED_WAIT_S)
                raise refused
        request[BODY] = validate(model, await read_json(request, optional=route.body_optional))
        return await route.handler(request)

    handler.__doc__ = route.handler.__doc__
    return handler


def register(app: web.Application) -> None:
    """Add every route of the table to the app's router (GET routes answer HEAD too)."""
    app[ROUTES] = dict(BY_KEY)
    for route in TABLE:
        if route.method == "GET":
            app.router.add_get(route.path, _with_body(route))
        else:
            app.router.add_route(route.method, route.path, _with_body(route))

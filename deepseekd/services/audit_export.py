"""Audit export: the log's events as JSON lines, CSV or a FHIR Bundle of AuditEvents.

Events are read in id order, a batch at a time (never the whole log in memory), and written
out as they come. An export is itself audited (``audit.export``, with the format and the
filters, never content) before the first event is read; it covers the events before its own
record, so what it holds is fixed when it starts. The formatting is plain functions of one
event as ``AuditLog.query`` gives it (the chained fields plus ``prev_hash`` and ``hash``):
``jsonl_line``, ``csv_row``, ``fhir_r4`` and ``fhir_r5``, for anything else that ships
events (the SIEM forwarder).

FHIR: ``fhir`` is R4 (4.0.1, what hospitals run; R4B's AuditEvent is the same resource),
``fhir-r5`` is R5. The codes (DICOM, HL7 terminology) are documented in README.md, "Audit
export".
"""

from __future__ import annotations

import abc
import csv
import datetime as dt
import io
import ipaddress
import json
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from deepseekd.domain.audit import CHAIN_FIELDS, Event
from deepseekd.domain.errors import Invalid
from deepseekd.domain.identity import Identity
from deepseekd.services.audit import AuditLog

COLUMNS = (*CHAIN_FIELDS, "prev_hash", "hash", "recorded")
"""Every chained field, the chain's two hashes (so an export can be verified again), and
``recorded``: ``at`` as an ISO 8601 UTC time for people (not chained)."""
BATCH = 500
"""Events read per database call."""

# -- times and filters -----------------------------------------------------------------

_DAY = re.compile(r"^\d{4}-?\d{2}-?\d{2}$")


def parse_time(text: str, *, field: str, end: bool = False) -> float:
    """``YYYY-MM-DD`` (a UTC day: its first instant, or with ``end`` the first instant of the
    next day, so an end day is taken in whole) or an ISO 8601 date-time (UTC unless it names
    an offset), as epoch seconds. Raises Invalid naming ``field``."""
    value = text.strip()
    try:
        if _DAY.match(value):
            day = dt.date.fromisoformat(value)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return (start + dt.timedelta(days=1 if end else 0)).timestamp()
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(
            f"{field}: expected a day (YYYY-MM-DD, UTC) or an ISO 8601 date-time such as "
            f"2026-05-01T08:00:00Z, got {text[:40]!r}",
            field=field,
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def iso(at: float) -> str:
    """Epoch seconds as an ISO 8601 UTC instant with microseconds (a FHIR ``instant``)."""
    stamp = dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


@dataclass(frozen=True)
class Filters:
    """Which events: ``since`` (inclusive) to ``until`` (exclusive), epoch seconds, and the
    exact actor, action and outcome; None takes all."""

    since: float | None = None
    until: float | None = None
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None

    def check(self) -> None:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise Invalid("until: the end (to) is not after the start (from)", field="until")

    def described(self) -> dict[str, Any]:
        """What the ``audit.export`` event records of the filters (only those given)."""
        out: dict[str, Any] = {}
        if self.since is not None:
            out["since"] = iso(self.since)
        if self.until is not None:
            out["until"] = iso(self.until)
        for name in ("actor", "action", "outcome"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


# -- JSON lines and CSV ----------------------------------------------------------------


def record(ev: dict[str, Any]) -> dict[str, Any]:
    """The exported fields of one event, in COLUMNS order."""
    return {**{k: ev[k] for k in COLUMNS[:-1]}, "recorded": iso(ev["at"])}


def jsonl_line(ev: dict[str, Any]) -> str:
    """One event as one line of JSON (the chained values exactly as they were hashed)."""
    return json.dumps(record(ev), ensure_ascii=False, separators=(",", ":")) + "\n"


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A CSV cell: empty for None; text a spreadsheet would run as a formula (it starts with
    = + - @, a tab or a carriage return) gets a leading apostrophe, so it stays text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA) else value
    return repr(value) if isinstance(value, float) else str(value)


def csv_row(ev: dict[str, Any]) -> list[str]:
    return [csv_cell(v) for v in record(ev).values()]


# -- FHIR AuditEvent -------------------------------------------------------------------

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
LOCAL = "urn:deepseekd:"
"""Prefix of deepseekd's own code systems and identifiers: ``urn:deepseekd:action`` (the
action as logged), ``urn:deepseekd:role``, ``urn:deepseekd:user``, ``urn:deepseekd:audit-event``
and ``urn:deepseekd:<kind>`` for a target ``<kind>:<name>``."""


def coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


APPLICATION = coding(DCM, "110100", "Application Activity")
EXPORT = coding(DCM, "110106", "Export")
PATIENT_RECORD = coding(DCM, "110110", "Patient Record")
SECURITY_ALERT = coding(DCM, "110113", "Security Alert")
USER_AUTHENTICATION = coding(DCM, "110114", "User Authentication")
REST = coding(EVENT_TYPE, "rest", "RESTful Operation")
USER_ATTRIBUTES = coding(DCM, "110137", "User Security Attributes Changed")
SOFTWARE_CONFIGURATION = coding(DCM, "110131", "Software Configuration")
APPLICATION_SERVER = coding(SOURCE_TYPE, "4", "Application Server")


@dataclass(frozen=True)
class Kind:
    """What an action is in FHIR terms: type, DICOM (or REST) subtype, and C/R/U/D/E."""

    type: dict[str, str]
    subtype: dict[str, str] | None
    action: str


KINDS: dict[str, Kind] = {
    "service.start": Kind(APPLICATION, coding(DCM, "110120", "Application Start"), "E"),
    "service.stop": Kind(APPLICATION, coding(DCM, "110121", "Application Stop"), "E"),
    "config.load": Kind(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "R"),
    "settings.change": Kind(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "U"),
    "lora.load": Kind(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "C"),
    "lora.unload": Kind(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "D"),
    "keys.rotate": Kind(SECURITY_ALERT, coding(DCM, "110129", "Security Configuration"), "U"),
    "directory.mapping_change": Kind(
        SECURITY_ALERT, coding(DCM, "110136", "Security Roles Changed"), "U"
    ),
    "account.lockout": Kind(SECURITY_ALERT, USER_ATTRIBUTES, "U"),
    "admin.totp": Kind(USER_AUTHENTICATION, coding(DCM, "110122", "Login"), "E"),
    "user.export": Kind(EXPORT, None, "R"),
    "audit.export": Kind(EXPORT, None, "R"),
    "usage.report": Kind(EXPORT, None, "R"),
    "breakglass.start": Kind(
        SECURITY_ALERT, coding(DCM, "110127", "Emergency Override Started"), "E"
    ),
    "breakglass.stop": Kind(
        SECURITY_ALERT, coding(DCM, "110138", "Emergency Override Stopped"), "E"
    ),
    "breakglass.expire": Kind(
        SECURITY_ALERT, coding(DCM, "110138", "Emergency Override Stopped"), "E"
    ),
    "breakglass.read": Kind(PATIENT_RECORD, coding(RESTFUL, "read", "read"), "R"),
    "breakglass.quota": Kind(
        SECURITY_ALERT, coding(DCM, "110132", "Use of Restricted Function"), "E"
    ),
    "breakglass.review": Kind(REST, coding(RESTFUL, "update", "update"), "U"),
    "history.rename": Kind(REST, coding(RESTFUL, "update", "update"), "U"),
    "history.delete": Kind(REST, coding(RESTFUL, "delete", "delete"), "D"),
    "history.delete_all": Kind(REST, coding(RESTFUL, "delete", "delete"), "D"),
    "history.retention_purge": Kind(REST, coding(RESTFUL, "delete", "delete"), "D"),
    "history.unreadable": Kind(SECURITY_ALERT, None, "R"),
    "history.incomplete": Kind(SECURITY_ALERT, None, "R"),
}
OPERATION = Kind(REST, coding(RESTFUL, "operation", "operation"), "E")
"""Inference and anything not named above: a call of this service."""


def kind_of(action: str) -> Kind:
    """The FHIR kind of a logged action (KINDS, then by its shape)."""
    if action in KINDS:
        return KINDS[action]
    if action.endswith(".login"):
        return Kind(USER_AUTHENTICATION, coding(DCM, "110122", "Login"), "E")
    if action.endswith(".logout"):
        return Kind(USER_AUTHENTICATION, coding(DCM, "110123", "Logout"), "E")
    if action.startswith(("user.", "key.")):
        verb = action.rsplit(".", 1)[-1]
        crud = "C" if "create" in verb else "D" if verb in ("erase", "revoke", "remove") else "U"
        return Kind(SECURITY_ALERT, USER_ATTRIBUTES, crud)
    return OPERATION


PURPOSES = {
    "treatment": coding(ACT_REASON, "ETREAT", "Emergency Treatment"),
    "recovery": coding(ACT_REASON, "HSYSADMIN", "health system administration"),
    "legal": coding(ACT_REASON, "HLEGAL", "legal"),
    "other": coding(ACT_REASON, "BTG", "break the glass"),
}
"""Break-glass reason codes as v3 ActReason purposes of use; a break-glass event that does
not carry its reason (a read, a stop) is "BTG"."""
OUTCOMES = {"ok": "0", "stopped": "4", "denied": "4", "locked": "4", "error": "8"}
"""deepseekd outcomes as FHIR's audit-event-outcome; any other is "8" (serious failure)."""
OUTCOME_NAMES = {"0": "Success", "4": "Minor failure", "8": "Serious failure"}


def _detail_json(ev: dict[str, Any]) -> dict[str, Any]:
    try:
        parsed = json.loads(ev["detail"] or "")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def purposes(ev: dict[str, Any]) -> list[dict[str, str]]:
    """The purpose of use of a break-glass event (from its ``reason_code``); none otherwise."""
    if not ev["action"].startswith("breakglass."):
        return []
    return [PURPOSES.get(str(_detail_json(ev).get("reason_code")), PURPOSES["other"])]


def outcome_code(ev: dict[str, Any]) -> str:
    return OUTCOMES.get(ev["outcome"], "8")


def subtypes(ev: dict[str, Any]) -> list[dict[str, str]]:
    """The standard subtype (if any), then the action as deepseekd logged it."""
    kind = kind_of(ev["action"])
    local = coding(LOCAL + "action", ev["action"], ev["action"])
    return [kind.subtype, local] if kind.subtype is not None else [local]


def reference(target: str) -> dict[str, Any]:
    """A target ``kind:name`` as a Reference by identifier (``urn:deepseekd:kind``)."""
    kind, sep, name = target.partition(":")
    if not sep or not kind or not name:
        return {"display": target}
    return {"identifier": {"system": LOCAL + kind, "value": name}, "display": target}


def target_roles(target: str) -> tuple[dict[str, str], dict[str, str]]:
    """(audit-entity-type, object-role) of a target: a user is a person in the User role,
    a key or the admin scope a security resource, anything else a domain resource."""
    kind = target.partition(":")[0]
    if kind == "user":
        return coding(ENTITY_TYPE, "1", "Person"), coding(OBJECT_ROLE, "6", "User")
    system_object = coding(ENTITY_TYPE, "2", "System Object")
    if kind in ("key", "admin"):
        return system_object, coding(OBJECT_ROLE, "13", "Security Resource")
    return system_object, coding(OBJECT_ROLE, "4", "Domain Resource")


def chain_details(ev: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) of every chained field that is set, plus prev_hash and hash: what a
    SIEM needs to anchor the record, or, with the audit key, to verify it."""
    out = []
    for name in COLUMNS[:-1]:
        value = ev[name]
        if value is not None:
            out.append((name, value if isinstance(value, str) else json.dumps(value)))
    return out


def _network_type(client: str) -> str:
    try:
        ipaddress.ip_address(client)
    except ValueError:
        return "1"  # machine name
    return "2"  # IP address


@dataclass(frozen=True)
class _Agent:
    """Who took part, before either FHIR version's shape is put on it."""

    who: dict[str, Any]
    type: dict[str, str]
    requestor: bool
    role: str | None = None
    client: str | None = None
    alt_id: str | None = None


def agents(ev: dict[str, Any], observer: str) -> list[_Agent]:
    """The person (or unknown caller) who asked, or deepseekd itself for what it does on its
    own; for a service event about a person (an expired break-glass), that person too."""
    app = _Agent({"display": observer}, coding(DCM, "110150", "Application"), True)
    human = coding(ROLE_TYPE, "humanuser", "human user")
    actor, service = ev["actor"], ev["role"] == "service"
    if actor is None and (service or ev["client"] is None):
        return [app]
    who: dict[str, Any] = {"display": actor or "unknown user"}
    if actor is not None:
        who["identifier"] = {"system": LOCAL + "user", "value": actor}
    alt = None if ev["actor_id"] is None else str(ev["actor_id"])
    person = _Agent(who, human, not service, None if service else ev["role"], ev["client"], alt)
    return [app, person] if service else [person]


def _role(role: str) -> dict[str, Any]:
    return {"coding": [{"system": LOCAL + "role", "code": role}], "text": role}


def _agent_r4(a: _Agent) -> dict[str, Any]:
    out: dict[str, Any] = {"type": {"coding": [a.type]}, "who": a.who, "requestor": a.requestor}
    if a.role:
        out["role"] = [_role(a.role)]
    if a.alt_id:
        out["altId"] = a.alt_id
    if a.client:
        out["network"] = {"address": a.client, "type": _network_type(a.client)}
    return out


def _entities_r4(ev: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if ev["target"]:
        kind, role = target_roles(ev["target"])
        out.append({"what": reference(ev["target"]), "type": kind, "role": role})
    out.append(
        {
            "what": _record_ref(ev),
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "description": "this event's record in deepseekd's hash-chained audit log",
            "detail": [{"type": k, "valueString": v} for k, v in chain_details(ev)],
        }
    )
    return out


def _record_ref(ev: dict[str, Any]) -> dict[str, Any]:
    return {
        "identifier": {"system": LOCAL + "audit-event", "value": str(ev["id"])},
        "display": f"audit event {ev['id']}",
    }


def fhir_r4(ev: dict[str, Any], observer: str) -> dict[str, Any]:
    """One event as a FHIR R4 AuditEvent."""
    kind, code = kind_of(ev["action"]), outcome_code(ev)
    out: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(ev["id"]),
        "type": kind.type,
        "subtype": subtypes(ev),
        "action": kind.action,
        "recorded": iso(ev["at"]),
        "outcome": code,
        "outcomeDesc": ev["outcome"],
    }
    reasons = purposes(ev)
    if reasons:
        out["purposeOfEvent"] = [{"coding": [p]} for p in reasons]
    out["agent"] = [_agent_r4(a) for a in agents(ev, observer)]
    out["source"] = {"observer": {"display": observer}, "type": [APPLICATION_SERVER]}
    out["entity"] = _entities_r4(ev)
    return out


def _agent_r5(a: _Agent) -> dict[str, Any]:
    out: dict[str, Any] = {"type": {"coding": [a.type]}, "who": a.who, "requestor": a.requestor}
    if a.role:
        out["role"] = [_role(a.role)]
    if a.client:
        out["networkString"] = a.client
    return out


def _entities_r5(ev: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if ev["target"]:
        out.append(
            {"what": reference(ev["target"]), "role": {"coding": [target_roles(ev["target"])[1]]}}
        )
    details = [{"type": {"text": k}, "valueString": v} for k, v in chain_details(ev)]
    out.append({"what": _record_ref(ev), "detail": details})
    return out


def fhir_r5(ev: dict[str, Any], observer: str) -> dict[str, Any]:
    """One event as a FHIR R5 AuditEvent."""
    kind, code = kind_of(ev["action"]), outcome_code(ev)
    out: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(ev["id"]),
        "category": [{"coding": [kind.type]}],
        "code": {"coding": subtypes(ev), "text": ev["action"]},
        "action": kind.action,
        "recorded": iso(ev["at"]),
        "outcome": {
            "code": coding(OUTCOME, code, OUTCOME_NAMES[code]),
            "detail": [{"text": ev["outcome"]}],
        },
    }
    reasons = purposes(ev)
    if reasons:
        out["authorization"] = [{"coding": [p]} for p in reasons]
    out["agent"] = [_agent_r5(a) for a in agents(ev, observer)]
    out["source"] = {"observer": {"display": observer}, "type": [{"coding": [APPLICATION_SERVER]}]}
    out["entity"] = _entities_r5(ev)
    return out


def bundle_entry(resource: dict[str, Any], ev: dict[str, Any], observer: str) -> dict[str, Any]:
    """A Bundle entry; its fullUrl is a UUID derived from the observer and the event's chain
    hash, so the same event exported twice has the same fullUrl."""
    name = f"{LOCAL}{observer}:audit-event:{ev['id']}:{ev['hash']}"
    return {"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}", "resource": resource}


# -- the writers -----------------------------------------------------------------------


class _Writer(abc.ABC):
    """Text before the events, one batch of events, text after them."""

    def head(self) -> str:
        return ""

    @abc.abstractmethod
    def batch(self, events: list[dict[str, Any]]) -> str:
        """The events of one batch, as this format writes them."""

    def tail(self) -> str:
        return ""


class _JsonLines(_Writer):
    def batch(self, events: list[dict[str, Any]]) -> str:
        return "".join(jsonl_line(ev) for ev in events)


class _Csv(_Writer):
    def _rows(self, rows: list[list[str]]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerows(rows)
        return buf.getvalue()

    def head(self) -> str:
        return self._rows([list(COLUMNS)])

    def batch(self, events: list[dict[str, Any]]) -> str:
        return self._rows([csv_row(ev) for ev in events])


class _FhirBundle(_Writer):
    def __init__(
        self,
        resource: Callable[[dict[str, Any], str], dict[str, Any]],
        observer: str,
        timestamp: float,
    ) -> None:
        self._resource, self._observer, self._timestamp = resource, observer, timestamp
        self._first = True

    def head(self) -> str:
        start = {"resourceType": "Bundle", "type": "collection", "timestamp": iso(self._timestamp)}
        return json.dumps(start, separators=(",", ":"))[:-1] + ',"entry":['

    def batch(self, events: list[dict[str, Any]]) -> str:
        parts = []
        for ev in events:
            entry = bundle_entry(self._resource(ev, self._observer), ev, self._observer)
            parts.append(("" if self._first else ",") + json.dumps(entry, ensure_ascii=False))
            self._first = False
        return "".join(parts)

    def tail(self) -> str:
        return "]}\n"


@dataclass(frozen=True)
class Format:
    name: str
    media_type: str
    extension: str


FORMATS: dict[str, Format] = {
    "jsonl": Format("jsonl", "application/x-ndjson", "jsonl"),
    "csv": Format("csv", "text/csv; charset=utf-8", "csv"),
    "fhir": Format("fhir", "application/fhir+json; fhirVersion=4.0", "fhir.json"),
    "fhir-r5": Format("fhir-r5", "application/fhir+json; fhirVersion=5.0", "fhir-r5.json"),
}


def default_observer() -> str:
    """How the FHIR source names this deepseekd: ``deepseekd@<host name>``."""
    return f"deepseekd@{socket.gethostname()}"


# -- the export ------------------------------------------------------------------------


@dataclass
class Export:
    """One export under way: ``chunks()`` yields its text; ``count`` the events so far."""

    format: Format
    filename: str
    event_id: int
    """The export's own ``audit.export`` event: the export holds the events before it."""
    _audit: AuditLog
    _filters: Filters
    _writer: _Writer
    _batch: int
    count: int = field(default=0)

    async def chunks(self) -> AsyncIterator[str]:
        yield self._writer.head()
        async for events in self._batches():
            self.count += len(events)
            yield self._writer.batch(events)
        yield self._writer.tail()

    async def _batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        f, after = self._filters, 0
        while True:
            events = await self._audit.query(
                since=f.since,
                until=f.until,
                actor=f.actor,
                action=f.action,
                outcome=f.outcome,
                after_id=after,
                before_id=self.event_id,
                limit=self._batch,
            )
            if events:
                yield events
            if len(events) < self._batch:
                return
            after = events[-1]["id"]


class AuditExport:
    def __init__(
        self,
        audit: AuditLog,
        clock: Callable[[], float],
        observer: str | None = None,
        batch: int = BATCH,
    ) -> None:
        self._audit = audit
        self._now = clock
        self.observer = observer or default_observer()
        self._batch = batch

    def _writer(self, fmt: str) -> _Writer:
        if fmt == "jsonl":
            return _JsonLines()
        if fmt == "csv":
            return _Csv()
        resource = fhir_r4 if fmt == "fhir" else fhir_r5
        return _FhirBundle(resource, self.observer, self._now())

    async def start(self, fmt: str, filters: Filters, by: Identity | None) -> Export:
        """Check the request, record it (``audit.export``; fails closed: no record, no
        export) and return the export, ready to stream."""
        if fmt not in FORMATS:
            raise Invalid(f"format: one of {', '.join(FORMATS)}", field="format")
        filters.check()
        extra = {"format": fmt, **filters.described()}
        event_id = await self._audit.append(Event.by(by, "audit.export", extra=extra))
        stamp = dt.datetime.fromtimestamp(self._now(), dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        spec = FORMATS[fmt]
        name = f"deepseekd-audit-{stamp}.{spec.extension}"
        return Export(spec, name, event_id, self._audit, filters, self._writer(fmt), self._batch)

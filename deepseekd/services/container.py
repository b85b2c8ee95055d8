"""The container: every service built once, in dependency order, from the settings. The
daemon and the CLI both use it, so there is one way to open the database, check the master
key and wire the audit log.

``Services.build`` reads the master key files and constructs; it does no database work.
``await services.open(migrate=...)`` brings the database to (or checks it is at) this
deepseekd's schema, checks the master key against it and loads the service keys and the
run-time settings; ``await services.close()`` stops the writer and closes every connection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from deepseekd.config import Settings
from deepseekd.directory.ldap import LdapDirectory
from deepseekd.directory.oidc import OidcClient
from deepseekd.obs.metrics import Metrics
from deepseekd.obs.notify import Notifier
from deepseekd.security.keyring import Keyring, SecretBox
from deepseekd.services.access_review import AccessReview
from deepseekd.services.accounts import AccountService
from deepseekd.services.audit import AuditLog
from deepseekd.services.auth import AuthService
from deepseekd.services.breakglass import BreakGlassService
from deepseekd.services.chat import ChatService
from deepseekd.services.directory_login import DirectorySignIn
from deepseekd.services.erasure import ErasureService
from deepseekd.services.feedback import FeedbackService
from deepseekd.services.finetune.datasets import DatasetService
from deepseekd.services.finetune.jobs import JobService
from deepseekd.services.finetune.releases import ReleaseService
from deepseekd.services.history import HistoryService
from deepseekd.services.keys import KeyService
from deepseekd.services.lifecycle import Lifecycle
from deepseekd.services.lora import LoraService
from deepseekd.services.notice import NoticeService
from deepseekd.services.presets import PresetService
from deepseekd.services.rights import GroupRights
from deepseekd.services.settings import RuntimeSettings
from deepseekd.services.sso import SsoService
from deepseekd.services.usage import QuotaService
from deepseekd.services.user_import import UserImport
from deepseekd.services.users_view import UsersView
from deepseekd.store.db import Database

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``, or a test's clock that moves when told)."""


@dataclass
class Services:
    settings: Settings
    clock: Clock
    metrics: Metrics
    life: Lifecycle
    db: Database
    keys: KeyService
    audit: AuditLog
    accounts: AccountService
    auth: AuthService
    usage: QuotaService
    history: HistoryService
    lora: LoraService
    runtime: RuntimeSettings
    chat: ChatService
    erasure: ErasureService
    sso: SsoService
    breakglass: BreakGlassService
    access_review: AccessReview = field(init=False)
    """Reads only the audit log and the accounts: built from the others."""
    notice: NoticeService = field(init=False)
    presets: PresetService = field(init=False)
    feedback: FeedbackService = field(init=False)
    users_view: UsersView = field(init=False)
    user_import: UserImport = field(init=False)
    datasets: DatasetService = field(init=False)
    finetune_jobs: JobService = field(init=False)
    releases: ReleaseService = field(init=False)

    def __post_init__(self) -> None:
        self.access_review = AccessReview(
            self.db, self.audit, self.settings.audit, self.settings.quota.timezone, self.clock
        )
        self.notice = NoticeService(self.db, self.audit, self.clock)
        self.presets = PresetService(self.db, self.audit, self.clock)
        self.feedback = FeedbackService(self.db, self.keys, self.audit, self.usage, self.clock)
        self.users_view = UsersView(self.db, self.accounts, self.usage)
        self.user_import = UserImport(self.db, self.audit, self.clock)
        self.datasets = DatasetService(self.settings, self.db, self.keys, self.audit, self.clock)
        self.finetune_jobs = JobService(
            self.settings, self.db, self.keys, self.audit, self.datasets, self.clock
        )
        self.releases = ReleaseService(
            self.settings,
            self.db,
            self.audit,
            self.lora,
            self.auth.verify_second_factor,
            self.clock,
        )

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        model_name: str = "",
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> Services:
        """Construct every service. Raises KeyringError when no master key is found."""
        metrics = metrics or Metrics()
        keyring = Keyring.for_data_dir(settings.data_dir)
        db = Database(
            settings.database_url,
            busy_timeout_ms=settings.store.busy_timeout_ms,
            pool_size=settings.store.pool_size,
            observe=metrics.observe_transaction,
        )
        life = Lifecycle(model_name)
        keys = KeyService(db, keyring, settings.keys_dir, clock, settings.cluster.sync_interval_s)
        audit = AuditLog(db, keys.cached_audit_key, clock, metrics.audit_write_failures.inc)
        keys.audit = audit
        accounts = AccountService(db, settings.auth, clock, audit, SecretBox(keys.cached_totp_key))
        rights = GroupRights(settings.auth.group, settings.auth.directory_default_role)
        ldap = LdapDirectory(settings.auth.ldap) if settings.auth.ldap.url else None
        directory = DirectorySignIn(db, settings.auth, audit, rights, clock, ldap)
        auth = AuthService(db, settings.auth, clock, audit, accounts, settings.quota, directory)
        oidc = OidcClient(settings.auth.oidc, clock) if settings.auth.oidc.issuer else None
        sso = SsoService(oidc, auth, audit, settings.auth, clock, keys.cached_sso_key)
        directory.on_unavailable = metrics.identity_source_errors.labels("ldap").inc
        sso.on_unavailable = metrics.identity_source_errors.labels("oidc").inc
        auth.on_lockout = metrics.lockouts.inc
        auth.throttle.on_refused = metrics.sign_ins_throttled.inc
        usage = QuotaService(db, settings.quota, clock)
        history = HistoryService(db, keys, audit, clock)
        lora = LoraService(settings, db, audit, life, clock)
        runtime = RuntimeSettings(settings, db, audit, usage, clock)
        chat = ChatService(settings, life, usage, history, audit, lora, metrics, clock, rights)
        erasure = ErasureService(settings, db, keys, audit, chat, clock)
        breakglass = _breakglass(
            settings, db, audit, (auth, accounts, chat), history, clock, metrics
        )
        return cls(
            settings,
            clock,
            metrics,
            life,
            db,
            keys,
            audit,
            accounts,
            auth,
            usage,
            history,
            lora,
            runtime,
            chat,
            erasure,
            sso,
            breakglass,
        )

    async def open(self, *, migrate: bool) -> tuple[str | None, str]:
        """Migrate (``migrate``) or require the schema at head; check the master key; load
        the run-time settings. Returns (revision before, revision now)."""
        if migrate:
            before, head = await self.db.upgrade()
        else:
            await self.db.require_head()
            before = head = await self.db.current_revision() or ""
        await self.keys.check()  # refuses a wrong or missing master key
        await self.runtime.load()
        return before, head

    async def close(self) -> None:
        await self.chat.titles.close()  # background titles write to the database
        await self.db.close()


def _breakglass(
    settings: Settings,
    db: Database,
    audit: AuditLog,
    hooks: tuple[AuthService, AccountService, ChatService],
    history: HistoryService,
    clock: Clock,
    metrics: Metrics,
) -> BreakGlassService:
    """The break-glass service, hooked into what it changes: the console's sign-in (admin
    scope), who may enrol an authenticator, and the quota check (lift_quota)."""
    auth, accounts, chat = hooks
    bg = settings.breakglass
    notifier = Notifier(
        bg.notify_url,
        bg.notify_ca_file,
        bg.notify_syslog,
        lambda channel: metrics.notify_errors.labels(channel).inc(),
    )
    service = BreakGlassService(db, bg, audit, auth.verify_second_factor, clock, history, notifier)

    def counts(active: int, overdue: int) -> None:
        metrics.breakglass_active.set(active)
        metrics.breakglass_unreviewed.set(overdue)

    service.on_counts = counts
    chat.quota_lift = service.quota_lift
    accounts.may_have_totp = service.may_start
    auth.acts_as_admin = service.acts_as_admin
    return service


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    migrate: bool = False,
    clock: Clock = time.time,
    metrics: Metrics | None = None,
) -> AsyncIterator[Services]:
    """``async with open_services(settings) as svc``: built, opened, closed at the end."""
    svc = Services.build(settings, clock=clock, metrics=metrics)
    try:
        await svc.open(migrate=migrate)
        yield svc
    finally:
        await svc.close()

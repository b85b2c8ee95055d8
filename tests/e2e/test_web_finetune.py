"""The console's Fine-tuning tab in a real Chromium against the real app over the FakeEngine
(its own daemon for this module, LoRA adapters enabled: the fake engine takes any adapter
the service has checked), clicked through as an admin would.

The fake daemon has no model, but a console upload counts tokens with the served model's
tokenizer (without one, a file whose lines are all right is refused with 503): [engine]
model names a folder holding only a tiny word-level tokenizer with a chat template (built
here in milliseconds), so the upload path is the real one, tokens counted. Training
needs a real model, so the jobs are seeded in this process against the daemon's database
with the real services: the dataset `ward7` imported, jobs on record (one running, two that
succeeded with their adapter files where training leaves them, one that failed) and the
first job's regression answers sealed under the dataset's key.

* Datasets: listed with their counts; an upload refused for a wrong file (every wrong line
  by its number, under the file field), a real upload, a file over the body limit.
* Jobs: progress bars, loss, time left, eval loss before → after, "weekly timer"; the list
  refreshes on its own while a job runs, and not while the tab is hidden.
* A job's report: the prompt with the answers before and after, side by side.
* Promote: a missing and a wrong code refused at the code field (nothing promoted), then a
  fresh code serves v1 (the engine has the adapter: /admin/api/lora and /v1/models), a
  second job v2; Roll back with a fresh code serves v1 again.
* Delete a dataset after confirming: gone, and its job's report is withheld from then on.
* axe finds nothing serious on the tab with the report open; no CSP refusal, no page error.

Each fresh authenticator code is for a later 30-second step than the last one accepted
(the server accepts one step either side of now): `Authenticator.fresh` waits for the real
clock only when the next step is out of reach. Screenshots at desktop and 390 px width:
test-artifacts/web/admin-finetune-*.png.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, FilePayload, Page, expect

from deepseekd.config import Settings
from deepseekd.engine import files
from deepseekd.services.container import open_services
from deepseekd.store import finetune as repo
from tests.api.helpers import wrong_code
from tests.api.test_lora import make_adapter
from tests.e2e import web_fixtures
from tests.e2e.axe_check import assert_accessible
from tests.e2e.web_fixtures import (
    DESKTOP,
    FakeWeb,
    Problems,
    _run,
    shoot_admin,
    sign_in_admin,
    start_fake_web,
)
from tests.support.store_setup import add_users

chromium = web_fixtures.browser  # the module's Chromium (a fixture, under this name here)
ADMIN = "ft.boss"
MODEL = "fake-model"  # the FakeEngine's served name
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PARAMS = {"rank": 8, "alpha": 16, "epochs": 2, "lr": 0.0002, "max_steps": 0, "batch_size": 4}
PROMPT = "Who runs ward 7?"
PAIRS = [
    ("Who runs ward 7?", "Sister Okafor runs ward 7."),
    ("When is the ward 7 handover?", "At 07:30 and 19:30."),
    ("Where is the ward 7 drug trolley?", "Beside the nurses' station."),
    ("Who covers ward 7 at night?", "The night sister on bleep 4471."),
    ("Can visitors stay after 20:00?", "Only with the nurse in charge's agreement."),
]


def _jsonl(pairs: list[tuple[str, str]]) -> bytes:
    return "\n".join(json.dumps({"messages": [{"role": "user", "content": q},
                                              {"role": "assistant", "content": a}]})
                     for q, a in pairs).encode() + b"\n"


def _words(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) + 1 for m in messages)


def _file(name: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": "application/jsonl", "buffer": data}


# --------------------------------------------------------------------------- the daemon


def tokenizer_model(folder: Path) -> Path:
    """A "model" folder that is only a tokenizer: config.json (what [engine] model asks of a
    folder), a word-level tokenizer and a chat template (what the upload's token count uses)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    folder.mkdir(parents=True)
    tok = Tokenizer(WordLevel({"<unk>": 0, "<|user|>": 1, "<|assistant|>": 2},
                              unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
        "chat_template": "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n"
                         "{% endfor %}"}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWeb]:
    tmp = tmp_path_factory.mktemp("finetune-web")
    w = start_fake_web(tmp, DEEPSEEKD_LORA__ENABLED="true",
                       DEEPSEEKD_ENGINE__MODEL=str(tokenizer_model(tmp / "tokenizer-only")))
    try:
        yield w
    finally:
        w.stop(timeout=30)


async def _seed(data_dir: Path) -> dict[str, int]:
    """ward7 v1, four jobs on it and the first succeeded job's report; the jobs' ids."""
    settings = dataclasses.replace(Settings(), data_dir=data_dir)
    async with open_services(settings) as svc:
        await svc.datasets.import_(None, "ward7", _jsonl(PAIRS), PROMPT + "\n", _words)

        def ward7_id(s: Any) -> int:
            row = repo.dataset(s, "ward7", 1)
            assert row is not None
            return int(row.id)

        dataset_id = await svc.db.read("t.ds", ward7_id)
        now = time.time()
        jobs = {
            "failed": dict(status="failed", step=2, total_steps=12, loss=2.9, started_by=ADMIN,
                           started_at=now - 7200, updated_at=now - 7000, finished_at=now - 7000,
                           error="the trainer ran out of memory"),
            "first": dict(status="succeeded", step=12, total_steps=12, loss=0.41,
                          eval_before=2.345, eval_after=1.234, started_by=ADMIN,
                          started_at=now - 3600, updated_at=now - 3000, finished_at=now - 3000),
            "second": dict(status="succeeded", step=12, total_steps=12, loss=0.38,
                           eval_before=2.3, eval_after=1.1, started_by="timer",
                           started_at=now - 1800, updated_at=now - 1200, finished_at=now - 1200),
            # A quarter done after a minute: about three minutes left.
            "running": dict(status="running", step=3, total_steps=12, loss=1.7, started_by=ADMIN,
                            started_at=now - 60, updated_at=now),
        }

        def write(s: Any) -> dict[str, int]:
            return {k: int(repo.add_job(s, dataset_id=dataset_id, dataset_name="ward7",
                                        dataset_version=1, base_model=MODEL,
                                        params=json.dumps(PARAMS), host="e2e-test", **v).id)
                    for k, v in jobs.items()}

        ids = await svc.db.write("t.jobs", write)
        for key, dropout in (("first", 0.0), ("second", 0.1)):
            adapter = make_adapter(svc.releases.jobs_dir / str(ids[key]) / "adapter",
                                   lora_dropout=dropout)
            sha = files.digest({n: {"sha256": files.sha256_file(adapter / n)}
                                for n in ADAPTER_FILES})

            def finish(s: Any, job: int = ids[key], sha: str = sha) -> None:
                repo.job(s, job).adapter_sha256 = sha  # type: ignore[union-attr]

            await svc.db.write("t.job", finish)
        jobs_svc = svc.finetune_jobs
        await jobs_svc._store_answers(ids["first"], "before", [PROMPT], ["I do not know."])
        await jobs_svc._store_answers(ids["first"], "after", [PROMPT], ["Sister Okafor."])
        return ids


class Authenticator:
    """The admin's authenticator app: each `fresh()` code is for a later 30-second step than
    the one before, within the server's window (one step either side of now); it waits for
    the real clock only when the next step is not in reach yet."""

    def __init__(self, uri: str) -> None:
        otp = pyotp.parse_uri(uri)
        assert isinstance(otp, pyotp.TOTP)
        self.otp, self.secret, self.last = otp, otp.secret, -1

    def fresh(self) -> str:
        now = time.time()
        step = int(now // 30)
        # The oldest step in the window, unless the next one starts before the server reads it.
        lowest = step - 1 if now % 30 < 27 else step
        want = max(self.last + 1, lowest)
        if want > step + 1:  # out of reach: wait until it is the step after the server's now
            time.sleep((want - 1) * 30 - now + 0.3)
        self.last = want
        return str(self.otp.at(want * 30))


@pytest.fixture(scope="module")
def boss(web: FakeWeb) -> dict[str, Any]:
    [admin] = _run(add_users(web.db_url, web.data_dir, [ADMIN], "admin"))
    assert admin.password and admin.totp_uri
    return {"name": admin.name, "password": admin.password, "api_key": admin.api_key,
            "otp": Authenticator(admin.totp_uri)}


@pytest.fixture(scope="module")
def jobs(web: FakeWeb) -> dict[str, int]:
    return dict(_run(_seed(web.data_dir)))


@pytest.fixture(scope="module")
def problems() -> Problems:
    return Problems()


@pytest.fixture(scope="module")
def console(chromium: Browser, web: FakeWeb, boss: dict[str, Any], jobs: dict[str, int],
            problems: Problems) -> Iterator[Page]:
    ctx = chromium.new_context(base_url=web.url, viewport=DESKTOP)
    page = problems.watch(ctx.new_page())
    sign_in_admin(page, boss["name"], boss["password"], boss["otp"].fresh())
    page.click("#tab-finetune")
    expect(page.locator("#panel-finetune")).to_be_visible()
    yield page
    ctx.close()


def _sql(web: FakeWeb, statement: str, *params: Any) -> None:
    """What the training worker writes as it goes (its progress, its end)."""
    conn = sqlite3.connect(web.data_dir / "deepseekd.db", timeout=30)
    try:
        with conn:
            conn.execute(statement, params)
    finally:
        conn.close()


def _cells(row: Any) -> list[str]:
    return [c.strip() for c in row.locator("th, td").all_inner_texts()]


# --------------------------------------------------------------------------- datasets


def test_datasets_listed_a_wrong_file_refused_by_line_then_imported(console: Page) -> None:
    ward7 = console.locator('#ft-datasets tr[data-dataset="ward7"]')
    expect(ward7).to_have_count(1)
    cells = _cells(ward7)
    # 5 examples, 1 held out to evaluate ([finetune] eval_fraction 0.1, at least one); the
    # tokens as _words counted them: the median and the longest.
    tokens = sorted(_words([{"content": q}, {"content": a}]) for q, a in PAIRS)
    assert cells[:5] == ["ward7", "v1", "5", "4 / 1", f"{tokens[2]} / {tokens[-1]}"], cells

    # A wrong file: every wrong line by its number, in full, under the file field.
    bad = _jsonl(PAIRS[:2]) + b'{"messages": [{"role": "doctor", "content": "hi"}]}\nnot json\n'
    console.fill("#ft-name", "ward9")
    console.set_input_files("#ft-file", files=[_file("ward9.jsonl", bad)])
    console.click("#ft-upload-submit")
    err = console.locator("#ft-file-error")
    expect(err).to_be_visible()  # every line is checked before the tokenizer is loaded
    expect(err).to_contain_text("2 lines are wrong:")
    expect(err).to_contain_text("line 3: messages[0].role: one of system, user, assistant")
    expect(err).to_contain_text("line 4: not JSON")
    assert err.inner_text().count("\n") >= 2  # one line each
    expect(console.locator("#ft-file")).to_have_attribute("aria-invalid", "true")
    expect(console.locator('#ft-datasets tr[data-dataset="ward9"]')).to_have_count(0)
    shoot_admin(console, "finetune-upload-error")

    # Over the body limit ([server] max_body_bytes, 4 MiB): how to import it instead.
    console.set_input_files("#ft-file", files=[_file("big.jsonl", _jsonl(PAIRS) * 30_000)])
    console.click("#ft-upload-submit")
    expect(err).to_contain_text("larger than the console accepts")
    expect(err).to_contain_text("deepseekd finetune dataset import")

    # The right file, with regression prompts: imported as ward9 v1.
    right = _jsonl(PAIRS[1:] + PAIRS[1:2])  # one line twice: dropped as a duplicate
    console.set_input_files("#ft-file", files=[_file("ward9.jsonl", right)])
    console.fill("#ft-prompts", "Who covers ward 9?\nWhere is the trolley?\n")
    console.click("#ft-upload-submit")
    expect(console.locator("#ft-upload-msg")).to_have_text(  # the tokenizer loads (~5 s)
        "Imported ward9 v1: 4 examples (3 to train on, 1 to evaluate), 2 regression prompts.",
        timeout=30_000)
    expect(err).to_be_hidden()
    expect(console.locator("#ft-file")).not_to_have_attribute("aria-invalid", "true")
    ward9 = console.locator('#ft-datasets tr[data-dataset="ward9"]')
    expect(ward9).to_have_count(1)
    cells = _cells(ward9)
    assert cells[:4] == ["ward9", "v1", "4 (1 duplicate dropped)", "3 / 1"], cells
    assert cells[4] != "—" and cells[5] == ADMIN, cells  # counted by the served tokenizer
    shoot_admin(console, "finetune-datasets")


# --------------------------------------------------------------------------- jobs


def test_jobs_with_progress_time_left_and_eval_loss_refreshing_while_one_runs(
        console: Page, web: FakeWeb, jobs: dict[str, int]) -> None:
    rows = console.locator("#ft-jobs tbody tr")
    expect(rows).to_have_count(4)
    assert [r.get_attribute("data-job") for r in rows.all()] == [
        str(jobs[k]) for k in ("running", "second", "first", "failed")]  # newest first
    running = console.locator(f'#ft-jobs tr[data-job="{jobs["running"]}"]')
    bar = running.locator("progress")
    expect(bar).to_have_attribute("value", "3")
    expect(bar).to_have_attribute("max", "12")
    cells = _cells(running)
    assert cells[1:5] == ["ward7:v1", "running", "3 / 12", "1.700"], cells
    assert cells[5] in ("about 3 min", "about 2 min"), cells  # 9 steps at 20 s each
    first = _cells(console.locator(f'#ft-jobs tr[data-job="{jobs["first"]}"]'))
    assert first[2:7] == ["succeeded", "12 / 12", "0.410", "—", "2.345 → 1.234"], first
    second = _cells(console.locator(f'#ft-jobs tr[data-job="{jobs["second"]}"]'))
    assert second[2] == "succeeded" and second[7] == "weekly timer", second
    failed = console.locator(f'#ft-jobs tr[data-job="{jobs["failed"]}"]')
    expect(failed.locator(".badge")).to_have_attribute("class", "badge ft-failed")

    # The worker reports progress: the list shows it without a click.
    _sql(web, "UPDATE finetune_jobs SET step = 9, loss = 0.9, updated_at = ? WHERE id = ?",
         time.time(), jobs["running"])
    expect(bar).to_have_attribute("value", "9", timeout=8_000)
    expect(running.locator("td").nth(3)).to_have_text("0.900")
    shoot_admin(console, "finetune-jobs")

    # Another tab: the refresh stops (no call while the Fine-tuning tab is hidden; a call
    # already on its way when the tab changed is let through first).
    console.click("#tab-users")
    console.wait_for_timeout(300)
    calls: list[str] = []
    console.on("request", lambda r: calls.append(r.url) if "/finetune/jobs" in r.url else None)
    console.wait_for_timeout(3_500)  # more than the 3 s between refreshes
    assert calls == [], calls
    with console.expect_request(lambda r: "/finetune/jobs" in r.url):
        console.click("#tab-finetune")  # loaded again at once
    expect(bar).to_be_visible()

    # The job ends: shown as such, and the refreshing stops (nothing runs).
    _sql(web, "UPDATE finetune_jobs SET status = 'cancelled', finished_at = ?, updated_at = ? "
         "WHERE id = ?", time.time(), time.time(), jobs["running"])
    expect(running.locator(".badge")).to_have_text("cancelled", timeout=8_000)
    expect(running.locator("td").nth(4)).to_have_text("—")
    console.wait_for_timeout(300)
    calls.clear()
    console.wait_for_timeout(3_500)
    assert calls == [], calls


def test_a_jobs_report_side_by_side(console: Page, jobs: dict[str, int]) -> None:
    console.get_by_role("button", name=f"Open job #{jobs['failed']}", exact=True).click()
    box = console.locator("#ft-job")
    expect(box).to_be_visible()
    expect(box).to_be_focused()
    expect(console.locator("#ft-job-facts")).to_contain_text("the trainer ran out of memory")
    expect(console.locator("#ft-promote")).to_be_hidden()  # only a job that succeeded

    console.get_by_role("button", name=f"Open job #{jobs['first']}", exact=True).click()
    expect(console.locator("#ft-job-title")).to_have_text(f"Job #{jobs['first']}: ward7:v1")
    selected = console.locator(f'#ft-jobs tr[data-job="{jobs["first"]}"]')
    expect(selected).to_have_class("selected")
    expect(selected).to_have_attribute("aria-current", "true")
    report = console.locator("#ft-report")
    expect(report).to_be_visible()
    assert [h.strip() for h in report.locator("thead th").all_inner_texts()] == [
        "Prompt", "Before", "After"]
    expect(report.locator("tbody tr")).to_have_count(1)
    assert _cells(report.locator("tbody tr")) == [PROMPT, "I do not know.", "Sister Okafor."]
    facts = console.locator("#ft-job-facts")
    expect(facts).to_contain_text("Eval loss before2.345")
    expect(facts).to_contain_text("Eval loss after1.234")
    # max_steps 0 (no limit) is left out
    expect(facts).to_contain_text("rank 8, alpha 16, epochs 2, learning rate 0.0002, batch size 4")
    expect(console.locator("#ft-promote")).to_be_visible()
    expect(console.locator("#ft-promote-model")).to_have_text(MODEL)
    shoot_admin(console, "finetune-report")


# --------------------------------------------------------------------------- promote


def _adapters(console: Page) -> list[dict[str, Any]]:
    resp = console.request.get("/admin/api/lora")
    assert resp.ok, resp.text()
    return list(resp.json()["adapters"])


def _releases(console: Page) -> list[str]:
    rows = console.locator("#ft-releases tbody tr[data-release]")
    return [" ".join(_cells(rows.nth(i))[:4]) for i in range(rows.count())]


def test_promote_with_a_fresh_code_then_a_second_job_then_roll_back(
        console: Page, web: FakeWeb, boss: dict[str, Any], jobs: dict[str, int]) -> None:
    otp: Authenticator = boss["otp"]
    code_error = console.locator("#ft-promote-totp-error")
    console.fill("#ft-promote-name", "ward7")
    console.click("#ft-promote-submit")  # no code: asked for, nothing sent
    expect(code_error).to_have_text("Enter the 6-digit code from your authenticator app.")
    console.fill("#ft-promote-totp", wrong_code(otp.secret, time.time()))
    console.click("#ft-promote-submit")
    expect(code_error).to_contain_text("Wrong or already used code")
    expect(console.locator("#ft-promote-totp")).to_have_attribute("aria-invalid", "true")
    expect(console.locator("#admin-view")).to_be_visible()  # still signed in
    assert _adapters(console) == [] and _releases(console) == []
    assert_accessible(console, "finetune-report-errors")

    console.fill("#ft-promote-totp", otp.fresh())
    console.click("#ft-promote-submit")
    msg = console.locator("#ft-promote-msg")
    expect(msg).to_have_text(f"Serving as {MODEL}:ward7 (v1).")
    expect(code_error).to_be_hidden()
    expect(console.locator("#ft-promote-totp")).to_have_value("")
    expect(console.locator('#ft-releases tr[data-release="ward7"]')).to_have_count(1)
    assert _releases(console) == [f"ward7 v1 #{jobs['first']} serving"]
    [loaded] = _adapters(console)
    assert (loaded["name"], loaded["loaded"], loaded["base_model"]) == ("ward7", True, MODEL)
    models = httpx.get(web.url + "/v1/models", timeout=10,
                       headers={"Authorization": f"Bearer {boss['api_key']}"}).json()
    assert f"{MODEL}:ward7" in [m["id"] for m in models["data"]]
    v1_sha = loaded["sha256"]

    console.get_by_role("button", name=f"Open job #{jobs['second']}", exact=True).click()
    expect(console.locator("#ft-job-title")).to_have_text(f"Job #{jobs['second']}: ward7:v1")
    expect(msg).to_have_text("")
    console.fill("#ft-promote-name", "ward7")
    console.fill("#ft-promote-totp", otp.fresh())
    console.click("#ft-promote-submit")
    expect(msg).to_have_text(f"Serving as {MODEL}:ward7 (v2).")
    expect(console.locator('#ft-releases tr[data-release="ward7"]')).to_have_count(2)
    assert _releases(console) == [f"ward7 v2 #{jobs['second']} serving",
                                  f"ward7 v1 #{jobs['first']} kept"]
    [loaded] = _adapters(console)
    assert loaded["sha256"] != v1_sha
    shoot_admin(console, "finetune-promoted")

    console.get_by_role("button", name="Roll back ward7").click()
    form = console.locator("#ft-rollback")
    expect(form).to_be_visible()
    expect(console.locator("#ft-rollback-title")).to_have_text("Roll back ward7")
    expect(console.locator("#ft-rollback-totp")).to_be_focused()
    assert console.locator("#ft-rollback-version option").all_inner_texts() == [
        "The version before v2", f"v1 (job #{jobs['first']})"]
    shoot_admin(console, "finetune-rollback")
    console.fill("#ft-rollback-totp", otp.fresh())  # may wait for the clock's next step
    console.click("#ft-rollback-submit")
    expect(console.locator("#ft-releases-msg")).to_have_text(
        f"Rolled back: {MODEL}:ward7 serves v1 instead of v2.")
    expect(form).to_be_hidden()
    expect(console.locator('#ft-releases tr[data-release="ward7"][data-version="1"]')
           ).to_contain_text("serving")
    assert _releases(console) == [f"ward7 v2 #{jobs['second']} kept",
                                  f"ward7 v1 #{jobs['first']} serving"]
    assert [a["sha256"] for a in _adapters(console)] == [v1_sha]
    # Nothing older than v1 is kept: only forward to v2, named.
    console.get_by_role("button", name="Roll back ward7").click()
    assert console.locator("#ft-rollback-version option").all_inner_texts() == [
        f"v2 (job #{jobs['second']})"]
    console.click("#ft-rollback-cancel")
    expect(form).to_be_hidden()


# --------------------------------------------------------------------------- delete


def test_delete_a_dataset_after_confirming(console: Page, jobs: dict[str, int]) -> None:
    console.get_by_role("button", name=f"Open job #{jobs['first']}", exact=True).click()
    expect(console.locator("#ft-report tbody tr")).to_have_count(1)
    row = console.locator('#ft-datasets tr[data-dataset="ward7"]')
    delete = row.get_by_role("button", name="Delete ward7 version 1")
    delete.click()
    expect(console.locator("#confirm")).to_be_visible()
    expect(console.locator("#confirm-text")).to_contain_text("version 1 of the dataset ward7")
    console.click("#confirm-cancel")
    expect(row).to_have_count(1)
    delete.click()
    console.click("#confirm-ok")
    expect(console.locator("#ft-msg")).to_have_text("Deleted ward7 v1.")
    expect(row).to_have_count(0)
    expect(console.locator('#ft-datasets tr[data-dataset="ward9"]')).to_have_count(1)
    # The open report's answers went with the dataset's key.
    expect(console.locator("#ft-report-note")).to_contain_text("Withheld:")
    expect(console.locator("#ft-report")).to_be_hidden()
    shoot_admin(console, "finetune-deleted")


def test_no_csp_violations_or_page_errors(console: Page, problems: Problems) -> None:
    assert problems.seen == [], problems.seen

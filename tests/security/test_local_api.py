"""Attacks on the local API: from a web page in the desk PC's browser, from any local process.

Each test reproduces one hole of issue 10 against a real server on loopback and a real outbox, and
asserts that nothing was recorded or changed. Synthetic identities only.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.test_localapi import (
    API_TOKEN,
    Agent,
    client,
    make_settings,
    open_outbox,
    synthetic_jpeg,
    verification_body,
)
from tests.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def records(agent: Agent) -> int:
    """Verifications on disk, read through a second, independent outbox."""
    other = open_outbox(agent.settings)
    try:
        return int(other.stats()["total"])
    finally:
        other.close()


@pytest.fixture
def relay_agent(tmp_path: Path) -> Iterator[Agent]:
    """The most open configuration the agent allows: relay on, a token configured."""
    with Agent(make_settings(tmp_path)) as a:
        yield a


# -- 10.1: closed by default, a credential for every change ------------------------------------------


def test_relay_ingest_is_closed_by_default_and_names_the_setting(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, relay=None, token=None)  # the defaults: relay off, no token
    settings = settings.model_copy(update={"face": settings.face.model_copy(update={"mode": "compute"})})
    with Agent(settings) as agent, client(agent) as c:
        r = c.post("/v1/verifications", json=verification_body())
        assert r.status_code == 404
        assert "[local_api] relay = true" in r.json()["hint"] and '[face] mode = "relay"' in r.json()["hint"]
        assert records(agent) == 0


def test_a_local_process_without_the_token_cannot_relay_or_change_the_operator(tmp_path: Path) -> None:
    """Any local account could curl a "face passed" record in and change the operator (the default
    configuration: no token, loopback): not any more, and the token alone opens it."""
    script = (
        "import httpx, json, sys\n"
        "url, token, body = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())\n"
        "auth = {'Authorization': 'Bearer ' + token} if token else {}\n"
        "a = httpx.post(url + '/v1/verifications', json=body, headers=auth, timeout=10)\n"
        "b = httpx.put(url + '/v1/operator', json={'operator': '冒充者'}, headers=auth, timeout=10)\n"
        "print(a.status_code, b.status_code)\n"
    )

    def local_process(agent: Agent, token: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", script, agent.url, token],
            input=json.dumps(verification_body()),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.split()

    with Agent(make_settings(tmp_path / "open", token=None)) as agent:
        assert local_process(agent, "") == ["403", "403"]
        assert records(agent) == 0 and agent.operator.get() == "默认员"
    with Agent(make_settings(tmp_path / "tokened")) as agent:
        assert local_process(agent, "") == ["401", "401"]
        assert local_process(agent, "a-guessed-token") == ["401", "401"]
        assert records(agent) == 0 and agent.operator.get() == "默认员"
        assert local_process(agent, API_TOKEN) == ["202", "200"]  # the terminal with its credential


def test_without_a_token_configured_no_change_is_possible_on_loopback(tmp_path: Path) -> None:
    with Agent(make_settings(tmp_path, token=None)) as agent, client(agent) as c:
        relay = c.post("/v1/verifications", json=verification_body())
        operator = c.put("/v1/operator", json={"operator": "冒充者"})
        assert relay.status_code == 403 and "token" in relay.json()["hint"]
        assert operator.status_code == 403
        assert c.get("/v1/operator").status_code == 200  # reads stay open to this machine
    assert records(agent) == 0 and agent.operator.get() == "默认员"


def test_the_page_cookie_is_not_a_credential_for_changes(relay_agent: Agent) -> None:
    """A browser attaches the page's cookie by itself: it must not authorise a write."""
    with httpx.Client(base_url=relay_agent.url, cookies={"fvagent_token": API_TOKEN}, timeout=10) as c:
        assert c.post("/v1/verifications", json=verification_body()).status_code == 401
    assert records(relay_agent) == 0


def test_unix_socket_peers_are_checked_with_so_peercred(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "api.sock"
    for allowed, expected in (([os.getuid()], 202), ([os.getuid() + 12345], 403)):
        settings = make_settings(tmp_path, token=None, listen=f"unix:{sock}", allowed_uids=allowed)
        with Agent(settings) as agent:
            assert (sock.stat().st_mode & 0o777) == 0o660
            with httpx.Client(
                transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost", timeout=10
            ) as c:
                r = c.post("/v1/verifications", json=verification_body(seed=expected))
                assert r.status_code == expected, r.text
                if expected == 403:
                    assert "allowed_uids" in r.json()["hint"]
                    assert c.put("/v1/operator", json={"operator": "冒充者"}).status_code == 403
            assert records(agent) == (1 if expected == 202 else 0)
            agent.outbox.close()
        shutil.rmtree(tmp_path / "state")


# -- 10.2: browser-proof ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "text/plain"},
        {"Content-Type": "multipart/form-data; b=x"},
        {"Content-Type": "application/x-www-form-urlencoded"},
    ],
)
def test_a_body_that_is_not_declared_json_is_415(relay_agent: Agent, headers: dict[str, str]) -> None:
    content = json.dumps(verification_body()).encode()
    with httpx.Client(base_url=relay_agent.url, timeout=10) as c:
        r = c.post("/v1/verifications", content=content, headers={**AUTH, **headers})
        ui = c.put("/ui/operator", content=b'{"operator": "x"}', headers={"Origin": relay_agent.url, **headers})
    assert r.status_code == 415 and ui.status_code == 415
    assert records(relay_agent) == 0 and relay_agent.operator.get() == "默认员"


def test_a_foreign_origin_is_403_even_with_the_token(relay_agent: Agent) -> None:
    with client(relay_agent, API_TOKEN) as c:
        for origin in ("http://127.0.0.1:1", "http://localhost:8000", "null", "https://evil.example"):
            r = c.post("/v1/verifications", json=verification_body(), headers={"Origin": origin})
            assert r.status_code == 403, origin
            assert "access-control-allow-origin" not in r.headers
        assert c.get("/v1/status", headers={"Origin": "http://127.0.0.1:1"}).status_code == 403
    assert records(relay_agent) == 0


def test_allowed_origins_opens_exactly_those(tmp_path: Path) -> None:
    with (
        Agent(make_settings(tmp_path, allowed_origins=["http://127.0.0.1:8080"])) as agent,
        client(agent, API_TOKEN) as c,
    ):
        ok = c.post("/v1/verifications", json=verification_body(), headers={"Origin": "http://127.0.0.1:8080"})
        other = c.post("/v1/verifications", json=verification_body(seed=2), headers={"Origin": "http://127.0.0.1:8081"})
    assert ok.status_code == 202 and other.status_code == 403
    assert "access-control-allow-origin" not in ok.headers  # CORS is never opened


def test_the_page_operator_control_needs_the_pages_own_origin(relay_agent: Agent) -> None:
    with client(relay_agent) as c:
        no_origin = c.put("/ui/operator", json={"operator": "冒充者"})
        foreign = c.put("/ui/operator", json={"operator": "冒充者"}, headers={"Origin": "http://127.0.0.1:1"})
        rebound = c.put(
            "/ui/operator",
            json={"operator": "冒充者"},
            headers={"Origin": "http://evil.example:8787", "Host": "evil.example:8787"},
        )
        assert (no_origin.status_code, foreign.status_code) == (403, 403)
        assert rebound.status_code == 401  # a rebound DNS name is not this terminal's screen
        assert relay_agent.operator.get() == "默认员"
        own = c.put("/ui/operator", json={"operator": "李护士"}, headers={"Origin": relay_agent.url})
        assert own.status_code == 200 and relay_agent.operator.get() == "李护士"


ATTACK_PAGE = """<!doctype html><title>cat pictures</title><script>
const target = %(target)s, body = %(body)s;
Promise.allSettled([
  fetch(target + "/v1/verifications", {method: "POST", mode: "no-cors", body: new Blob([body])}),
  fetch(target + "/v1/verifications", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                                       body: body}),
  fetch(target + "/v1/verifications", {method: "POST", mode: "no-cors", credentials: "include",
                                       headers: {"Authorization": "Bearer guessed"}, body: body}),
  fetch(target + "/ui/operator", {method: "PUT", headers: {"Content-Type": "application/json"},
                                  body: JSON.stringify({operator: "冒充者"})}),
  fetch(target + "/ui/operator", {method: "POST", mode: "no-cors", body: JSON.stringify({operator: "冒充者"})}),
]).then(r => { document.title = "done " + r.map(x => x.status).join(","); });
</script>"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make setup-test installs it)")
def test_a_web_page_from_another_loopback_origin_records_nothing(tmp_path: Path) -> None:
    """The issue's own attack: a page in the desk PC's browser posts a "face passed" record no-cors
    to an agent in its default configuration (no token, loopback), relay opened."""
    from playwright.sync_api import sync_playwright

    from tests.test_operator_page_e2e import CHROMIUM_ARGS

    with Agent(make_settings(tmp_path, token=None)) as agent:
        _browser_attack(agent, sync_playwright, CHROMIUM_ARGS)


def _browser_attack(relay_agent: Agent, sync_playwright: Any, chromium_args: list[str]) -> None:
    html = ATTACK_PAGE % {"target": json.dumps(relay_agent.url), "body": json.dumps(json.dumps(verification_body()))}

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=chromium_args)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
                wait_for(lambda: page.title().startswith("done"), 20, "the attack page's requests to settle")
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert records(relay_agent) == 0
    assert relay_agent.operator.get() == "默认员"


# -- 10.3 and 10.9: plausible records, bounded input ---------------------------------------------------


def test_a_backdated_or_future_verify_time_is_422_with_the_rule(relay_agent: Agent) -> None:
    now = dt.datetime.now(SHANGHAI)
    with client(relay_agent, API_TOKEN) as c:
        for when in (now - dt.timedelta(days=3), now + dt.timedelta(minutes=11)):
            r = c.post("/v1/verifications", json=verification_body(when=when))
            assert r.status_code == 422
            (problem,) = [p for p in r.json()["problems"] if p["field"] == "verifyTime"]
            assert "max_clock_skew_s" in problem["rule"] and "600" in problem["rule"]
        assert (
            c.post("/v1/verifications", json=verification_body(when=now - dt.timedelta(minutes=9))).status_code == 202
        )
    assert records(relay_agent) == 1


def test_relay_flood_is_429_after_the_rate_limit(tmp_path: Path) -> None:
    with Agent(make_settings(tmp_path, max_relay_per_min=3)) as agent, client(agent, API_TOKEN) as c:
        codes = [c.post("/v1/verifications", json=verification_body(seed=i)).status_code for i in range(5)]
        r = c.post("/v1/verifications", json=verification_body(seed=9))
    assert codes == [202, 202, 202, 429, 429]
    assert r.status_code == 429 and "max_relay_per_min" in r.json()["hint"] and r.headers["retry-after"] == "60"
    assert records(agent) == 3


def test_a_retry_of_a_stored_post_gets_its_first_id_past_the_limits(tmp_path: Path) -> None:
    """A terminal that lost the 202 posts again with the same Idempotency-Key: it is answered with
    the record it already has, even once the rate limit or the unsent cap would refuse a new one."""
    with (
        Agent(make_settings(tmp_path, max_relay_per_min=2, max_unsent_relayed=2)) as agent,
        client(agent, API_TOKEN) as c,
    ):
        key = {"Idempotency-Key": "term-7-retry"}
        first = c.post("/v1/verifications", json=verification_body(seed=1), headers=key)
        c.post("/v1/verifications", json=verification_body(seed=2))
        assert c.post("/v1/verifications", json=verification_body(seed=3)).status_code in (429, 507)
        again = c.post("/v1/verifications", json=verification_body(seed=1), headers=key)
    assert first.status_code == 202 and again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"] and records(agent) == 2


def test_unsent_relayed_records_are_capped_507(tmp_path: Path) -> None:
    with Agent(make_settings(tmp_path, max_unsent_relayed=2)) as agent, client(agent, API_TOKEN) as c:
        codes = [c.post("/v1/verifications", json=verification_body(seed=i)).status_code for i in range(3)]
        r = c.post("/v1/verifications", json=verification_body(seed=9))
    assert codes == [202, 202, 507]
    assert "max_unsent_relayed" in r.json()["error"]
    assert records(agent) == 2


def test_relay_never_takes_the_space_kept_for_the_devices_own_captures(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    with Agent(make_settings(tmp_path, relay_reserve_bytes=free + 2**40)) as agent, client(agent, API_TOKEN) as c:
        r = c.post("/v1/verifications", json=verification_body())
    assert r.status_code == 507 and "relay_reserve_bytes" in r.json()["error"]
    assert records(agent) == 0


def _jpeg_with_gps(seed: int) -> bytes:
    img = Image.open(io.BytesIO(synthetic_jpeg(seed, (240, 200))))
    exif = Image.Exif()
    exif[0x010F] = "TerminalMaker"  # Make
    exif[0x8825] = {1: "N", 2: (22.0, 49.0, 1.0), 3: "E", 4: (108.0, 19.0, 1.0)}  # GPS: Nanning
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif, comment=b"lat 22.8170 lon 108.3669")
    return out.getvalue()


def test_relayed_photos_reach_the_outbox_without_exif_or_gps(relay_agent: Agent) -> None:
    tagged = _jpeg_with_gps(3)
    assert Image.open(io.BytesIO(tagged)).getexif().get_ifd(0x8825)  # the attack's photo does carry GPS
    with client(relay_agent, API_TOKEN) as c:
        record_id = c.post("/v1/verifications", json=verification_body(head=tagged, camera=tagged)).json()["id"]
    stored = relay_agent.outbox.payload(record_id)
    for field in ("headImg", "cameraImg"):
        data = base64.b64decode(stored[field])
        with Image.open(io.BytesIO(data)) as img:
            assert not img.info.get("exif") and not img.getexif() and "comment" not in img.info
        assert b"Exif" not in data and b"108.3669" not in data and b"TerminalMaker" not in data


def test_deeply_nested_json_is_400(relay_agent: Agent) -> None:
    deep = b'{"realName": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with client(relay_agent, API_TOKEN) as c:
        relay = c.post("/v1/verifications", content=deep, headers={"Content-Type": "application/json"})
        operator = c.put(
            "/v1/operator",
            content=b'{"operator": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            headers={"Content-Type": "application/json"},
        )
    assert relay.status_code == 400 and "nested" in relay.json()["error"]
    assert operator.status_code == 400
    assert records(relay_agent) == 0


def test_an_image_of_more_than_40_megapixels_is_refused(relay_agent: Agent) -> None:
    from core.images import ImageError, decode_image

    out = io.BytesIO()
    Image.fromarray(np.full((5001, 8000), 128, dtype=np.uint8)).save(out, format="JPEG", quality=20)
    huge = out.getvalue()
    with pytest.raises(ImageError, match="40 Mpx"):
        decode_image(huge, what="cameraImg")
    with client(relay_agent, API_TOKEN) as c:
        r = c.post("/v1/verifications", json=verification_body(camera=huge))
    assert r.status_code == 422
    assert any(p["field"] == "cameraImg" and "40 Mpx" in p["rule"] for p in r.json()["problems"])
    assert records(relay_agent) == 0


def test_page_photos_only_for_the_last_ten_minutes_and_v1_photos_only_with_full_data(tmp_path: Path) -> None:
    import time

    from agent.localapi.backend import DeskBackend
    from agent.localapi.server import LocalApiServer
    from agent.outbox import Outbox

    age = [0.0]  # how long ago the outbox believes the next record was committed
    agent = Agent(make_settings(tmp_path))
    agent.outbox.close()
    agent.outbox = Outbox.open(agent.settings.storage, clock=lambda: time.time() - age[0])
    agent.backend = DeskBackend(
        agent.settings, agent.outbox, agent.events, agent.operator, status_provider=agent.status, status_ttl_s=0
    )
    agent.server = LocalApiServer(agent.settings.local_api, agent.backend)
    with agent, client(agent, API_TOKEN) as writer, client(agent) as screen:
        fresh = writer.post("/v1/verifications", json=verification_body(seed=1)).json()["id"]
        age[0] = 601.0
        old = writer.post("/v1/verifications", json=verification_body(seed=2)).json()["id"]
        assert screen.get(f"/ui/photos/{fresh}/head").status_code == 200
        refused = screen.get(f"/ui/photos/{old}/camera")
        assert refused.status_code == 404 and "10 minutes" in refused.json()["error"]
        assert writer.get(f"/v1/verifications/{old}", params={"photos": "true"}).status_code == 403

"""The browser page end to end: headless chromium on the page a gateway serves, two
real gateway processes sharing one port, a real redis-server.

What a person does is done as they would: typing, clicking, picking a file; what
they see is read from the page. Other people are plain HTTP clients where a second
browser would add nothing.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import pytest

from tests.browser.conftest import Browser
from tests.httpkit import call, connect, ok
from tests.support import Deployment, wait_for

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
WAIT: Final = 15.0


def name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------
# Driving the page
# ---------------------------------------------------------------------------


def until(driver: Browser, check: Callable[[Browser], Any], timeout: float = WAIT) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(check)


def click(driver: Browser, css: str) -> None:
    """Click what ``css`` finds, again if the page redrew it in between."""

    def done(d: Browser) -> bool:
        by_css(d, css).click()
        return True

    until(driver, done)


def js(driver: Browser, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def by_css(driver: Browser, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def all_css(driver: Browser, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, css))


def state(driver: Browser) -> str:
    return str(by_css(driver, "#conn-state").get_attribute("data-state"))


def gateway_of(driver: Browser) -> str:
    return str(by_css(driver, "#conn-state").get_attribute("data-gateway"))


def wait_live(driver: Browser) -> None:
    until(driver, lambda d: state(d) == "live")


def open_page(driver: Browser, web: Deployment, suffix: str = "") -> None:
    driver.get(f"http://127.0.0.1:{web.port}/{suffix}")


def login(driver: Browser, user: str, password: str = "pw") -> None:
    until(driver, lambda d: by_css(d, "#login-user").is_displayed())
    by_css(driver, "#login-user").send_keys(user)
    by_css(driver, "#login-password").send_keys(password)
    by_css(driver, "#login-submit").click()
    wait_live(driver)


def texts(driver: Browser) -> list[str]:
    """The texts of the messages shown (sent ones, not those still sending), in order."""
    got = js(
        driver,
        "return [...document.querySelectorAll('#messages li.msg:not(.pending)')]"
        ".map(li => (li.querySelector('.text') || li.querySelector('.file button')).textContent)",
    )
    return list(got)


def wait_text(driver: Browser, text: str, timeout: float = WAIT) -> None:
    until(driver, lambda d: text in texts(d), timeout)


def type_and_send(driver: Browser, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = by_css(driver, "#composer-text")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def badge(driver: Browser, conv: str) -> str:
    css = f'#conv-list button[data-conv="{conv}"] .badge'
    return str(
        js(
            driver,
            "const b = document.querySelector(arguments[0]); return b ? b.textContent : null",
            css,
        )
    )


def http_send(web: Deployment, token: str, to: str, text: str) -> str:
    """A send from a plain HTTP client, retried (same cid) while a gateway is gone."""
    cid = uuid.uuid4().hex
    for _ in range(50):
        try:
            reply = call(web.port, "POST", "/send", {"to": to, "text": text, "cid": cid}, token)
        except OSError:
            time.sleep(0.1)
            continue
        if reply.status == 200:
            return str(ok(reply, "ack")["id"])
        time.sleep(0.1)
    raise AssertionError(f"could not send {text!r}")


# ---------------------------------------------------------------------------
# The page itself, over plain HTTP (no browser needed)
# ---------------------------------------------------------------------------


def test_page_is_served_with_headers_and_etag(web: Deployment) -> None:
    page = call(web.port, "GET", "/")
    assert page.status == 200, page
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert b'<script src="/app.js"' in page.body and b"<style" not in page.body
    etag = page.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    again = call(web.port, "GET", "/", headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b"" and again.headers["etag"] == etag
    changed = call(web.port, "GET", "/", headers={"If-None-Match": '"other"'})
    assert changed.status == 200 and changed.body == page.body
    for path, kind in (("/app.js", "text/javascript"), ("/app.css", "text/css")):
        got = call(web.port, "GET", path)
        assert got.status == 200 and got.headers["content-type"].startswith(kind), got
        assert got.headers["x-content-type-options"] == "nosniff"
        weak = call(web.port, "GET", path, headers={"If-None-Match": f"W/{got.headers['etag']}"})
        assert weak.status == 304
        head = call(web.port, "HEAD", path)
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == str(len(got.body))
    refused = call(web.port, "POST", "/app.js", b"x")
    assert refused.status == 405 and "GET" in refused.headers["allow"]
    assert call(web.port, "GET", "/index.html").status == 404


# ---------------------------------------------------------------------------
# In the browser
# ---------------------------------------------------------------------------


def test_two_users_chat_across_two_gateways(web: Deployment, browsers: Any) -> None:
    alice, bob = name("ann"), name("bob")
    a, b = browsers(), browsers()
    open_page(a, web)
    open_page(b, web)
    login(a, alice)
    login(b, bob)
    for _ in range(30):  # a reload is a new stream: the kernel spreads them
        if gateway_of(a) != gateway_of(b):
            break
        b.refresh()
        wait_live(b)
    assert {gateway_of(a), gateway_of(b)} == {"gw1", "gw2"}
    assert js(a, "return sessionStorage.getItem('redchat.token')")
    assert js(a, "return document.cookie") == ""

    type_and_send(a, f"hello {bob}")
    wait_text(b, f"hello {bob}")
    type_and_send(b, f"hi {alice}")
    wait_text(a, f"hi {alice}")
    assert texts(a).count(f"hello {bob}") == 1

    # a direct conversation: bob opens it, alice sees the unread count, then reads it
    by_css(b, "#dm-user").send_keys(alice)
    by_css(b, "#dm-form button").click()
    until(b, lambda d: by_css(d, "#conv-title").text == f"@ {alice}")
    type_and_send(b, "just us")
    type_and_send(b, "two now")
    wait_text(b, "two now")
    until(a, lambda d: badge(d, bob.lower()) == "2")
    click(a, f'#conv-list button[data-conv="{bob.lower()}"]')
    wait_text(a, "two now")
    assert texts(a) == ["just us", "two now"]
    assert badge(a, bob.lower()) == ""
    # a message to #general while alice reads the direct one counts there
    http_send(web, connect(web.port, bob), "#general", "general again")
    until(a, lambda d: badge(d, "#general") == "1")

    by_css(a, "#logout").click()
    until(a, lambda d: by_css(d, "#login-view").is_displayed())
    assert js(a, "return sessionStorage.getItem('redchat.token')") is None


def test_user_content_is_text_never_html(web: Deployment, browsers: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    a = browsers()
    open_page(a, web)
    login(a, name("xss"))
    payloads = ["<img src=x onerror=alert(1)>", '<b onmouseover="window.__x=1">bold</b>']
    for text in payloads:
        type_and_send(a, text)
    for text in payloads:
        wait_text(a, text)
    assert all_css(a, "#messages img") == [] and all_css(a, "#messages b") == []
    assert js(a, "return window.__x") is None
    with pytest.raises(NoAlertPresentException):
        a.switch_to.alert.text  # noqa: B018 - reading it is the check


def test_older_history_pages_in(web: Deployment, browsers: Any) -> None:
    old = name("old")
    token = connect(web.port, old)
    sent = [http_send(web, token, "#general", f"{old}-{i}") for i in range(70)]
    assert len(sent) == 70
    a = browsers()
    open_page(a, web)
    login(a, name("reader"))
    wait_text(a, f"{old}-69")

    def mine(d: Browser) -> list[str]:
        return [t for t in texts(d) if t.startswith(f"{old}-")]

    until(a, lambda d: len(mine(d)) >= 20)
    while len(mine(a)) < 70:
        before = len(mine(a))
        by_css(a, "#load-older").click()
        until(a, lambda d, n=before: len(mine(d)) > n)
    assert mine(a) == [f"{old}-{i}" for i in range(70)]


def test_file_round_trips(web: Deployment, browsers: Any, tmp_path: Any) -> None:
    alice, bob = name("fa"), name("fb")
    a, b = browsers(), browsers()
    open_page(a, web)
    open_page(b, web)
    login(a, alice)
    login(b, bob)
    data = bytes(range(256)) * 1200 + b"end"  # ~300 KB: progress has steps
    path = tmp_path / f"notes-{alice}.bin"
    path.write_bytes(data)
    by_css(a, "#file-input").send_keys(str(path))
    until(a, lambda d: all_css(d, '#uploads .upload[data-done="true"]'))
    label = f"Download {path.name}"
    wait_text(b, label)
    click(b, f'#messages .file button[aria-label="{label}"]')
    target = b.downloads / path.name
    wait_for(lambda: target.exists() and target.stat().st_size == len(data), 15, "the download")
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_invite_link_is_approved(web: Deployment, browsers: Any) -> None:
    owner, guest = name("own"), name("gst")
    room = f"#{name('r')}"
    a, b = browsers(), browsers()
    open_page(a, web)
    login(a, owner)
    by_css(a, "details#rooms-box summary").click()
    by_css(a, "#room-name").send_keys(room)
    by_css(a, "#room-form button").click()
    until(a, lambda d: by_css(d, "#conv-title").text == room)
    until(a, lambda d: by_css(d, "#make-link").is_displayed())
    by_css(a, "#make-link").click()
    until(a, lambda d: by_css(d, "#link-out").get_attribute("value"))
    link = by_css(a, "#link-out").get_attribute("value")
    assert link.startswith(f"http://127.0.0.1:{web.port}/#join=")

    b.get(link)
    until(b, lambda d: by_css(d, "#login-join").is_displayed())
    login(b, guest)
    until(b, lambda d: "waiting for its owner" in by_css(d, "#banner-text").text)
    request = f'#request-list li[data-user="{guest}"]'
    until(a, lambda d: all_css(d, request))
    click(a, f"{request} button")  # Approve
    until(b, lambda d: all_css(d, f'#conv-list button[data-conv="{room}"]'))
    click(b, f'#conv-list button[data-conv="{room}"]')
    type_and_send(b, "thanks for having me")
    wait_text(a, "thanks for having me")
    assert all_css(a, request) == []


def test_page_recovers_when_its_gateway_dies(web: Deployment, browsers: Any) -> None:
    """Kill -9 the gateway the page streams from: the page says so, reconnects to the
    other one with Last-Event-ID, and shows every message once, in order; a send made
    meanwhile goes through (retried with its cid)."""
    reader, writer = name("rd"), name("wr")
    token = connect(web.port, writer)
    a = browsers()
    open_page(a, web)
    login(a, reader)
    for i in range(3):
        http_send(web, token, "#general", f"before-{i}")
    wait_text(a, "before-2")
    victim = next(gw for gw in web.gateways if gw.name == gateway_of(a))
    try:
        victim.kill()
        until(a, lambda d: state(d) != "live", 10)
        until(a, lambda d: by_css(d, "#banner").is_displayed())
        ids = [http_send(web, token, "#general", f"during-{i}") for i in range(3)]
        assert len(set(ids)) == 3
        type_and_send(a, "typed-during")
        wait_live(a)
        for i in range(3):
            http_send(web, token, "#general", f"after-{i}")
        wait_text(a, "after-2")
        wait_text(a, "typed-during")
        assert gateway_of(a) != victim.name
        expected = [f"before-{i}" for i in range(3)] + [f"during-{i}" for i in range(3)]
        expected += [f"after-{i}" for i in range(3)]
        shown = [t for t in texts(a) if t.split("-")[0] in ("before", "during", "after")]
        assert shown == expected, shown
        assert texts(a).count("typed-during") == 1
        assert all_css(a, "#messages li.pending") == []
        assert not by_css(a, "#banner").is_displayed()
    finally:
        victim.start()


def hover_click(driver: Browser, li_css: str, label: str) -> None:
    """Point at a message (its actions show on hover or focus), then click one."""
    from selenium.webdriver.common.action_chains import ActionChains

    def done(d: Browser) -> bool:
        li = by_css(d, li_css)
        ActionChains(d).move_to_element(li).perform()
        found = [b for b in li.find_elements("css selector", ".actions button") if label in b.text]
        found[0].click()
        return True

    until(driver, done)


def test_reply_thread_schedule_report_and_status(web: Deployment, browsers: Any) -> None:
    me, other = name("me"), name("ot")
    token = connect(web.port, other)
    a = browsers()
    open_page(a, web)
    login(a, me)
    asked = http_send(web, token, "#general", f"question from {other}?")
    wait_text(a, f"question from {other}?")
    question = f'#messages li.msg[data-id="{asked}"]'

    hover_click(a, question, "Reply")
    until(a, lambda d: by_css(d, "#reply-bar").is_displayed())
    type_and_send(a, "here is an answer")
    wait_text(a, "here is an answer")
    quotes = js(
        a, "return [...document.querySelectorAll('#messages .quote')].map(q => q.textContent)"
    )
    assert f"{other}: question from {other}?" in quotes
    hover_click(a, question, "Thread")
    until(a, lambda d: by_css(d, "#thread-panel").is_displayed())
    until(a, lambda d: len(all_css(d, "#thread-list li.msg")) == 2)
    click(a, "#thread-close")

    from selenium.webdriver.support.ui import Select

    Select(by_css(a, "#schedule-in")).select_by_value("3600")
    type_and_send(a, "see you later")
    click(a, "#schedule-box summary")
    until(a, lambda d: len(all_css(d, "#schedule-list li")) == 1)
    assert "see you later" in by_css(a, "#schedule-list li").text
    click(a, "#schedule-list li button")  # Cancel
    until(a, lambda d: all_css(d, "#schedule-list li") == [])
    assert "see you later" not in texts(a)

    hover_click(a, question, "Report")
    until(a, lambda d: by_css(d, "#report-user").get_attribute("value") == other)
    by_css(a, "#report-reason").send_keys("testing")
    click(a, "#report-form button")
    until(a, lambda d: f"Reported {other} (1 of 3)" in by_css(d, "#banner-text").text)

    until(a, lambda d: me in by_css(d, "#online-list").text)
    assert by_css(a, "#ban-state").get_attribute("data-banned") == "false"
    assert "public messages" in by_css(a, "#quota").text
    severe = [e for e in a.get_log("browser") if e["level"] == "SEVERE"]
    assert not [e for e in severe if "Content Security Policy" in e["message"]], severe


def test_phone_sized_screen(web: Deployment, browsers: Any) -> None:
    a = browsers()
    metrics = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    a.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    open_page(a, web)
    login(a, name("ph"))
    assert by_css(a, "#composer-text").is_displayed()
    assert not by_css(a, "#dm-user").is_displayed()  # the sidebar folds away
    click(a, "#menu-toggle")
    until(a, lambda d: by_css(d, "#dm-user").is_displayed())
    assert js(a, "return innerWidth") == 390
    assert js(a, "return document.documentElement.scrollWidth <= innerWidth")

"""The SMART launches driven in a real browser (Playwright + Debian chromium) against the running EHR.

A tiny app on 127.0.0.1 receives the redirects: Alice unticks the imaging scope and the app's token
lacks it; Elena picks Maya from the patient picker; Dr. Chen launches a pre-approved app from a
chart and no consent page appears. A browser app's own page exchanges its code and reads FHIR
with ``fetch`` (CORS); a page of an unregistered origin cannot.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from tests.conftest import RunningStack
from tests.ehr.smart.flow import App, add_launchable, code_form, exchange, pkce, query_of, register_public
from tests.services import require_executable

pytestmark = pytest.mark.browser

SCOPE = "launch/patient openid fhirUser offline_access patient/Patient.rs patient/ImagingStudy.rs"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
]


class TinyApp:
    """The app's side: ``/launch`` starts an EHR launch, ``/cb`` receives the authorization response."""

    def __init__(self) -> None:
        self.callbacks: list[dict[str, str]] = []
        self.client_id = ""
        self.fhir_base = ""
        self.origin = ""
        self.verifier, self.challenge = pkce()
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                params = query_of(f"x:?{query}")
                if path == "/launch":
                    target = f"{app.origin}/auth/authorize?" + urlencode(
                        {
                            "response_type": "code",
                            "client_id": app.client_id,
                            "redirect_uri": app.redirect_uri,
                            "scope": "launch openid fhirUser patient/Patient.rs",
                            "state": "launch-state",
                            "aud": params["iss"],
                            "launch": params["launch"],
                            "code_challenge": app.challenge,
                            "code_challenge_method": "S256",
                        }
                    )
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.end_headers()
                    return
                if path == "/cb":
                    app.callbacks.append(params)
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(b"<p id='done'>done</p>")

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def redirect_uri(self) -> str:
        return f"{self.base}/cb"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_executable("chromium", "chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def tiny(ehr: RunningStack) -> Iterator[TinyApp]:
    app = TinyApp()
    app.origin = ehr.stack.ehr_settings.origin
    app.fhir_base = ehr.fhir_base
    yield app
    app.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def authorize_url(tiny: TinyApp, app: App, state: str) -> str:
    return f"{tiny.origin}/auth/authorize?" + urlencode(
        {
            "response_type": "code",
            "client_id": app.client_id,
            "redirect_uri": app.redirect_uri,
            "scope": SCOPE,
            "state": state,
            "aud": tiny.fhir_base,
            "code_challenge": tiny.challenge,
            "code_challenge_method": "S256",
        }
    )


def sign_in(page: Page, username: str, password: str) -> None:
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#sign-in")


def test_alice_withholds_imaging(page: Page, tiny: TinyApp) -> None:
    app = register_public(tiny.origin, tiny.redirect_uri)
    page.goto(authorize_url(tiny, app, "alice-state"))
    sign_in(page, "alice", "alice-demo-2024")
    page.uncheck('input[value="patient/ImagingStudy.rs"]')
    page.click("#allow")
    page.wait_for_selector("#done")
    params = tiny.callbacks[-1]
    assert params["state"] == "alice-state"
    token = exchange(tiny.origin, app, params["code"], tiny.verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    assert "patient/ImagingStudy.rs" not in body["scope"].split()
    assert body["patient"] == "alice"


def test_elena_picks_maya(page: Page, tiny: TinyApp) -> None:
    app = register_public(tiny.origin, tiny.redirect_uri)
    page.goto(authorize_url(tiny, app, "elena-state"))
    sign_in(page, "elena", "elena-demo-2024")
    page.wait_for_selector('input[name="patient"]')  # the picker, after the sign-in's navigation
    options = page.locator('input[name="patient"]')
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["maya"]
    page.check('input[value="maya"]')
    page.click("#choose")
    assert page.inner_text("#patient-name") == "Maya Moreno"
    page.click("#allow")
    page.wait_for_selector("#done")
    body = exchange(tiny.origin, app, tiny.callbacks[-1]["code"], tiny.verifier).json()
    assert body["patient"] == "maya"


def test_clinician_launches_pre_approved_app_without_consent(
    page: Page, tiny: TinyApp, ehr: RunningStack
) -> None:
    app = add_launchable(
        ehr.stack.ehr_settings, "launch openid fhirUser patient/Patient.rs", tiny.base, zero_click=True
    )
    tiny.client_id = client_id = app.client_id
    consent_pages: list[str] = []
    page.on(
        "response",
        lambda r: consent_pages.append(r.url) if "/ui/authorize/" in r.url and r.status == 200 else None,
    )
    page.goto(f"{tiny.origin}/ui/login")
    sign_in(page, "dr-chen", "chen-demo-2024")
    page.goto(f"{tiny.origin}/ui/chart/alice")
    page.click(f'button[data-client="{client_id}"]')
    page.wait_for_selector("#done")
    assert consent_pages == []
    params = tiny.callbacks[-1]
    assert params["state"] == "launch-state"
    body = exchange(tiny.origin, app, params["code"], tiny.verifier).json()
    assert body["patient"] == "alice"
    assert body["need_patient_banner"] is True
    assert httpx.get(body["smart_style_url"]).status_code == 200


#: A browser app's script at its redirect URI: the PKCE code exchange and a FHIR read, with fetch.
EXCHANGE_AND_READ = """async ([tokenUrl, form, fhirBase]) => {
  const answer = await fetch(tokenUrl, {method: "POST", body: new URLSearchParams(form)});
  const token = await answer.json();
  const read = await fetch(`${fhirBase}/Patient/${token.patient}`, {
    headers: {Authorization: `Bearer ${token.access_token}`, Accept: "application/fhir+json"},
  });
  return {patient: token.patient, status: read.status, id: (await read.json()).id, token: token.access_token};
}"""
#: The same FHIR read from a page that is not the app's: resolves to the error the page sees.
READ_ELSEWHERE = """async ([url, token]) => {
  try {
    const read = await fetch(url, {headers: {Authorization: `Bearer ${token}`}});
    return `read: ${read.status}`;
  } catch (error) {
    return `${error.name}`;
  }
}"""


def test_a_browser_app_exchanges_its_code_and_reads_fhir_with_fetch(page: Page, tiny: TinyApp) -> None:
    """SMART App Launch 2.2 CORS: the app's page (its registered origin, another port than the
    EHR's) does the code exchange and a FHIR read itself; the same page served at ``localhost``,
    an origin no client registered, cannot read the FHIR API with the same token."""
    app = register_public(tiny.origin, tiny.redirect_uri)
    page.goto(authorize_url(tiny, app, "fetch-state"))
    sign_in(page, "alice", "alice-demo-2024")
    page.click("#allow")
    page.wait_for_selector("#done")
    assert page.url.startswith(f"{tiny.base}/cb?")
    form = code_form(app, tiny.callbacks[-1]["code"], tiny.verifier)
    found = page.evaluate(EXCHANGE_AND_READ, [f"{tiny.origin}/auth/token", form, tiny.fhir_base])
    assert (found["patient"], found["status"], found["id"]) == ("alice", 200, "alice")
    page.goto(tiny.base.replace("127.0.0.1", "localhost") + "/cb")
    page.wait_for_selector("#done")
    assert page.evaluate(READ_ELSEWHERE, [f"{tiny.fhir_base}/Patient/alice", found["token"]]) == "TypeError"

"""Gated-model access: each refusal becomes its own clear message, raised before any weights load.

A small HTTP server on loopback answers the hub's access-check endpoint the way huggingface.co does
(status codes and X-Error-* headers), so huggingface_hub's real client code runs and nothing reaches the network.
"""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import pytest

from helpers.access import (
    HubUnreachableError,
    InvalidTokenError,
    LicenceNotAcceptedError,
    MissingTokenError,
    ModelAccessError,
    check_access,
    has_token,
    require_token,
)

REPO = "stabilityai/stable-diffusion-3.5-large"
MEDIUM = "stabilityai/stable-diffusion-3.5-medium"
SECRET = "hf_ThisIsASecretTokenValue"


class FakeHub(BaseHTTPRequestHandler):
    """Answers GET /api/models/<repo>/auth-check by the bearer token it is shown."""

    def do_GET(self):
        token = self.headers.get("authorization", "").removeprefix("Bearer ")
        if not self.path.endswith("/auth-check"):
            self._reply(404, {"X-Error-Code": "EntryNotFound"})
        elif token == "hf_accepted":
            self._reply(200, {})
        elif token == "hf_not_accepted":
            self._reply(
                403,
                {
                    "X-Error-Code": "GatedRepo",
                    "X-Error-Message": f"Access to model {REPO} is restricted and you are not in the authorized list.",
                },
            )
        elif token == "hf_wrong_repo":
            self._reply(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        elif token == "hf_server_error":
            self._reply(500, {})
        else:
            self._reply(401, {"X-Error-Message": "Invalid credentials in Authorization header"})

    def _reply(self, status, headers):
        body = json.dumps({"error": headers.get("X-Error-Message", "")}).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_accepted_licence_passes(hub):
    check_access(REPO, "hf_accepted", endpoint=hub)


def test_licence_not_accepted_says_where_to_accept_it(hub):
    with pytest.raises(LicenceNotAcceptedError) as error:
        check_access(REPO, "hf_not_accepted", endpoint=hub)
    message = str(error.value)
    assert f"https://huggingface.co/{REPO}" in message
    assert "accept the licence" in message
    assert "not in the authorized list" in message  # the hub's own words are passed on
    assert error.value.__cause__ is None and error.value.__context__ is None  # no raw 403 traceback


def test_rejected_token_says_to_make_a_new_one(hub):
    with pytest.raises(InvalidTokenError, match="settings/tokens"):
        check_access(REPO, "hf_expired", endpoint=hub)


def test_unknown_repository_is_reported(hub):
    with pytest.raises(ModelAccessError, match="no repository"):
        check_access(REPO, "hf_wrong_repo", endpoint=hub)


def test_server_error_is_reported_with_its_status(hub):
    with pytest.raises(ModelAccessError, match="HTTP 500"):
        check_access(REPO, "hf_server_error", endpoint=hub)


def test_no_network_says_so_and_offers_the_stand_in():
    with pytest.raises(HubUnreachableError) as error:
        check_access(REPO, "hf_accepted", endpoint=f"http://127.0.0.1:{closed_port()}")
    assert "internet connection" in str(error.value)
    assert "SD35_MODEL=toy" in str(error.value)


def test_offline_mode_is_named(monkeypatch, hub):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE"):
        check_access(REPO, "hf_accepted", endpoint=hub)


def test_missing_token_gives_the_steps():
    assert not has_token()
    with pytest.raises(MissingTokenError) as error:
        require_token(REPO)
    message = str(error.value)
    for step in ("HF_TOKEN", "notebook_login()", "hf auth login", f"https://huggingface.co/{REPO}", "SD35_MODEL=toy"):
        assert step in message


def test_token_from_the_environment_is_found_and_never_shown(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert has_token()
    token = require_token(REPO)
    assert token.reveal() == SECRET
    assert SECRET not in repr(token) + str(token) + f"{token}" + repr({"token": token})


def test_a_token_cannot_be_pickled():
    import pickle

    from helpers.access import Token

    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(Token(SECRET))


def test_token_shaped_text_from_the_hub_is_scrubbed():
    from helpers.access import Token, scrub

    said = f"Access denied for Bearer {SECRET}; also hf_AnotherOneThatLeaked123 and my-proxy-token"
    cleaned = scrub(said, Token("my-proxy-token"))
    assert SECRET not in cleaned and "hf_AnotherOneThatLeaked123" not in cleaned and "my-proxy-token" not in cleaned
    assert cleaned.count("[token hidden]") == 3


def test_refusals_keep_no_hub_exception_behind_them(hub):
    for token in ("hf_not_accepted", "hf_expired", "hf_wrong_repo", "hf_server_error"):
        with pytest.raises(ModelAccessError) as error:
            check_access(REPO, token, endpoint=hub)
        assert error.value.__context__ is None and error.value.__cause__ is None


def test_error_messages_never_contain_the_token(hub):
    for token in ("hf_not_accepted", "hf_expired", "hf_wrong_repo"):
        with pytest.raises(ModelAccessError) as error:
            check_access(REPO, token, endpoint=hub)
        assert token not in str(error.value)


def test_load_pipeline_without_token_stops_before_loading_weights(monkeypatch):
    from helpers.loading import load_pipeline

    with pytest.raises(MissingTokenError):
        load_pipeline("large", device="cpu")


def test_load_pipeline_with_licence_not_accepted_stops_before_loading_weights(monkeypatch, hub):
    from helpers.loading import load_pipeline

    requests = []
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub)  # what HF_ENDPOINT sets
    monkeypatch.setenv("HF_TOKEN", "hf_not_accepted")
    original = FakeHub.do_GET
    monkeypatch.setattr(FakeHub, "do_GET", lambda self: (requests.append(self.path), original(self))[1])
    with pytest.raises(LicenceNotAcceptedError):
        load_pipeline("medium", device="cpu")
    assert requests == [f"/api/models/{MEDIUM}/auth-check"]  # asked once; no file was requested


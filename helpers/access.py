"""Access to the gated SD3.5 repositories: finding the token and turning the hub's refusals into clear steps.

Introduced in notebook 01. The token comes from HF_TOKEN, a cached login (`hf auth login` in a terminal) or
`huggingface_hub.notebook_login()` in Jupyter. Its value is never printed, logged or stored by this package.
"""

from __future__ import annotations

import re
import threading
import unicodedata

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

from helpers.checks import checked, number, optional, shown

TOKEN_PAGE = "https://huggingface.co/settings/tokens"
HUB_TIMEOUT_S = 15.0
"""How long the access check waits for the hub's answer before saying it stalled."""


class ModelAccessError(RuntimeError):
    """The weights of a gated model cannot be reached; the message says what to do."""


class MissingTokenError(ModelAccessError):
    """No Hugging Face token was found."""


class InvalidTokenError(ModelAccessError):
    """The hub rejected the token itself."""


class LicenceNotAcceptedError(ModelAccessError):
    """The token works, but its account has not been granted access to the model (licence not accepted)."""


class HubUnreachableError(ModelAccessError):
    """The hub could not be reached (no network, a firewall, or offline mode)."""


class Token:
    """A Hugging Face token held so that it never shows: its repr and str say only that it is hidden (a traceback
    printed with its local variables, `%xmode Verbose` or `pytest --showlocals`, shows this), and `reveal()` hands
    the text to the one call that sends it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Token", len(self._value)))

    def __repr__(self) -> str:
        return f"Token(hidden, {len(self._value)} characters)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a Token is never pickled or saved")


TOKEN_SHAPED = re.compile(r"hf_[A-Za-z0-9]{6,}")


def scrub(text: str, token: Token | str | None = None) -> str:
    """`text` (a hub's or a proxy's words) with the token and anything shaped like one replaced."""
    value = token.reveal() if isinstance(token, Token) else token
    if value:
        text = text.replace(value, "[token hidden]")
    return TOKEN_SHAPED.sub("[token hidden]", text)


def has_token() -> bool:
    """Whether a token is available (HF_TOKEN or a cached login). Never reveals the token."""
    return get_token() is not None


def _login_steps(hub_id: str) -> str:
    return (
        f"  1. Accept the licence at https://huggingface.co/{hub_id} (log in, then 'Agree and access repository').\n"
        f"  2. Create a token with 'read' access at {TOKEN_PAGE}.\n"
        "  3. Give it to this session, one of:\n"
        "     - in a notebook cell: `from huggingface_hub import notebook_login; notebook_login()`\n"
        "     - in a terminal: `hf auth login`\n"
        "     - as an environment variable before starting Jupyter: `export HF_TOKEN=...` "
        "(Colab: add it under 'Secrets' as HF_TOKEN)\n"
        "  Or run the offline toy model instead: set SD35_MODEL=toy."
    )


def _is_network_error(error: BaseException) -> bool:
    # huggingface_hub's HTTP client has changed (requests, httpx, ...); recognise their transport errors by origin.
    package = type(error).__module__.split(".")[0]
    return isinstance(error, (ConnectionError, TimeoutError)) or package in {"httpx", "httpx2", "requests", "urllib3"}


def _character_name(character: str) -> str:
    names = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab", " ": "a space",
             "\u00a0": "a non-breaking space", "\u200b": "a zero-width space", "\ufeff": "a byte-order mark",
             "\f": "a form feed"}
    return names.get(character) or f"the character {unicodedata.name(character, 'without a name').lower()}"


def check_token_shape(token: Token | str) -> Token:
    """`token` (as a Token) if it can be a Hugging Face token (printable ASCII, no spaces), else InvalidTokenError
    saying what is wrong and where, without its value: copy-paste artefacts (line breaks, zero-width or
    non-breaking spaces) otherwise reach the hub as a malformed header."""
    if not isinstance(token, (Token, str)):
        raise InvalidTokenError(f"token must be text (a str) or a helpers Token, not {type(token).__name__}.")
    token = token if isinstance(token, Token) else Token(token)
    for position, character in enumerate(token.reveal(), start=1):
        if not (character.isascii() and character.isprintable()) or character.isspace():
            raise InvalidTokenError(
                f"Your Hugging Face token contains {_character_name(character)} (U+{ord(character):04X}) at "
                f"character {position} of {len(token)}: a copy-paste artefact, not part of any token. Copy the "
                f"token again from {TOKEN_PAGE} and set it again (HF_TOKEN, `hf auth login` or notebook_login())."
            )
    if len(token) < 8:
        raise InvalidTokenError(
            f"Your Hugging Face token is {len(token)} characters long, too short to be one. Copy it again from "
            f"{TOKEN_PAGE} and set it again (HF_TOKEN, `hf auth login` or notebook_login())."
        )
    return token


def hub_id_rule(value: object, name: str = "hub_id") -> str:
    """A model's name on the hub, 'owner/name' (e.g. 'stabilityai/stable-diffusion-3.5-large')."""
    if not isinstance(value, str) or not re.fullmatch(r"[\w.-]{1,96}/[\w.-]{1,96}", value):
        raise ValueError(f"{name}={shown(value)} must be a model's name on the hub, 'owner/name', e.g. "
                         "'stabilityai/stable-diffusion-3.5-large'.")
    return value


def _endpoint(value: object, name: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", value):
        raise ValueError(f"{name}={shown(value)} must be the hub's address, e.g. 'https://huggingface.co'.")
    return value


@checked(hub_id=hub_id_rule)
def require_token(hub_id: str) -> Token:
    """The token to use for a gated model (a Token: it never shows), checked for shape, or MissingTokenError with
    the steps to get one."""
    token = get_token()
    token = None if token is None else Token(token)
    if token is None:
        raise MissingTokenError(
            f"No Hugging Face token found, and {hub_id} is a gated model: its weights need a token from an "
            f"account that accepted its licence.\n{_login_steps(hub_id)}"
        )
    return check_token_shape(token)


def _answer_within(call, timeout_s: float, hub_id: str) -> None:
    """Run `call()` in a helper thread; re-raise what it raised, or HubUnreachableError if it takes too long (a
    proxy or firewall that accepts the connection and never answers would otherwise hang the cell for ever)."""
    outcome: list[BaseException | None] = []

    def target():
        try:
            call()
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed back to the caller's thread below
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise HubUnreachableError(
            f"The Hugging Face hub did not answer within {timeout_s:g} s while checking access to {hub_id}: the "
            "connection was accepted but no answer came, which points at a proxy or firewall rather than a missing "
            "network. Check the machine's proxy settings (HTTPS_PROXY) or try again later; to work without the "
            "hub, set SD35_MODEL=toy to run the offline toy model."
        )
    if outcome[0] is not None:
        raise outcome[0]


@checked(hub_id=hub_id_rule, endpoint=optional(_endpoint), timeout_s=number(0.1, 600))
def check_access(hub_id: str, token: Token | str, *, endpoint: str | None = None,
                 timeout_s: float = HUB_TIMEOUT_S) -> None:
    """Ask the hub whether `token` may download `hub_id`; raise a ModelAccessError that says what to do if not.

    Nothing is downloaded. `endpoint` is the hub's address (default: huggingface.co or HF_ENDPOINT). A hub that
    does not answer within `timeout_s` seconds is reported as stalled. No message contains the token, and none keeps
    the hub's own exception (raised outside its handler: no `__context__` to print).
    """
    token = check_token_shape(token)
    problem = _access_problem(hub_id, token, endpoint, timeout_s)
    if problem is not None:
        raise problem


def _access_problem(hub_id: str, token: Token, endpoint, timeout_s: float) -> ModelAccessError | None:
    try:
        _answer_within(lambda: HfApi(endpoint=endpoint).auth_check(hub_id, token=token.reveal()), timeout_s, hub_id)
    except GatedRepoError as error:
        hub_says = scrub(error.server_message or "", token)
        return LicenceNotAcceptedError(
            f"Your token works, but its account may not download {hub_id} yet: the licence on the model page has "
            f"not been accepted, or the request is still being reviewed.\n"
            f"  Open https://huggingface.co/{hub_id}, log in with the account that owns the token, and accept the "
            f"licence ('Agree and access repository'). Access is usually granted at once; then run this cell again."
            + (f"\n  The hub said: {hub_says}" if hub_says else "")
        )
    except RepositoryNotFoundError:
        return ModelAccessError(
            f"The hub reports no repository {hub_id!r} visible to your token. Check the model name, and that the "
            f"token belongs to the account that accepted the licence.\n{_login_steps(hub_id)}"
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            return InvalidTokenError(
                f"The hub rejected your token (HTTP 401): it is mistyped, expired or revoked. Create a new one at "
                f"{TOKEN_PAGE} and log in again.\n{_login_steps(hub_id)}"
            )
        return ModelAccessError(
            f"The hub answered HTTP {status} while checking access to {hub_id}. Try again in a minute; "
            f"https://status.huggingface.co shows outages."
        )
    except OfflineModeIsEnabled:
        return HubUnreachableError(
            f"HF_HUB_OFFLINE is set, so the hub cannot be asked for {hub_id}. Unset HF_HUB_OFFLINE to download the "
            "weights, or set SD35_MODEL=toy to run the offline toy model."
        )
    except Exception as error:
        if not _is_network_error(error):
            raise
        # The transport's own message can quote the request's headers, token included: only its type is named.
        return HubUnreachableError(
            f"Could not reach the Hugging Face hub to download {hub_id} ({type(error).__name__}). "
            "Check the machine's internet connection (in SageMaker: the VPC's internet access). "
            "To work without a network, set SD35_MODEL=toy to run the offline toy model."
        )
    return None

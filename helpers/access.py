"""Access to the gated SD3.5 repositories: finding the token and turning the hub's refusals into clear steps.

Introduced in notebook 01. The token comes from HF_TOKEN, a cached login (`hf auth login` in a terminal) or
`huggingface_hub.notebook_login()` in Jupyter. Its value is never printed, logged or stored by this package.
"""

from __future__ import annotations

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

TOKEN_PAGE = "https://huggingface.co/settings/tokens"


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


def require_token(hub_id: str) -> str:
    """The token to use for a gated model, or MissingTokenError with the steps to get one."""
    token = get_token()
    if token is None:
        raise MissingTokenError(
            f"No Hugging Face token found, and {hub_id} is a gated model: its weights need a token from an "
            f"account that accepted its licence.\n{_login_steps(hub_id)}"
        )
    return token


def check_access(hub_id: str, token: str, *, endpoint: str | None = None) -> None:
    """Ask the hub whether `token` may download `hub_id`; raise a ModelAccessError that says what to do if not.

    Nothing is downloaded. `endpoint` is the hub's address (default: huggingface.co or HF_ENDPOINT).
    """
    try:
        HfApi(endpoint=endpoint).auth_check(hub_id, token=token)
    except GatedRepoError as error:
        hub_says = error.server_message or ""
        raise LicenceNotAcceptedError(
            f"Your token works, but its account may not download {hub_id} yet: the licence on the model page has "
            f"not been accepted, or the request is still being reviewed.\n"
            f"  Open https://huggingface.co/{hub_id}, log in with the account that owns the token, and accept the "
            f"licence ('Agree and access repository'). Access is usually granted at once; then run this cell again."
            + (f"\n  The hub said: {hub_says}" if hub_says else "")
        ) from None
    except RepositoryNotFoundError:
        raise ModelAccessError(
            f"The hub reports no repository {hub_id!r} visible to your token. Check the model name, and that the "
            f"token belongs to the account that accepted the licence.\n{_login_steps(hub_id)}"
        ) from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise InvalidTokenError(
                f"The hub rejected your token (HTTP 401): it is mistyped, expired or revoked. Create a new one at "
                f"{TOKEN_PAGE} and log in again.\n{_login_steps(hub_id)}"
            ) from None
        raise ModelAccessError(
            f"The hub answered HTTP {status} while checking access to {hub_id}. Try again in a minute; "
            f"https://status.huggingface.co shows outages."
        ) from None
    except OfflineModeIsEnabled:
        raise HubUnreachableError(
            f"HF_HUB_OFFLINE is set, so the hub cannot be asked for {hub_id}. Unset HF_HUB_OFFLINE to download the "
            "weights, or set SD35_MODEL=toy to run the offline toy model."
        ) from None
    except Exception as error:
        if not _is_network_error(error):
            raise
        raise HubUnreachableError(
            f"Could not reach the Hugging Face hub to download {hub_id} ({type(error).__name__}: {error}). "
            "Check the machine's internet connection (in SageMaker: the VPC's internet access). "
            "To work without a network, set SD35_MODEL=toy to run the offline toy model."
        ) from None

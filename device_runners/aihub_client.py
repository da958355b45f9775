"""The AI Hub client side: the client's configuration (the token stays inside it), and its calls
with their failures turned into latbench's errors (DeviceError for what the user must fix, the
transient kinds the dispatcher backs off from). Used by the runner (device_runners.aihub) and the
dispatcher (device_runners.aihub_dispatcher)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latbench.core.errors import DeviceError
from latbench.core.text import first_line

_BOX = "│┃|┌┐└┘─━ \t"  # table borders in the service's error text

INSTALL_HINT = "install the client with `pip install 'latbench[aihub]'`"
CONFIGURE_HINT = ("run `qai-hub configure --api_token TOKEN` (it writes ~/.qai_hub/client.ini) or point "
                  "$QAIHUB_CLIENT_INI at a client.ini with api_token, api_url and web_url in its [api] section")


class _Transient(Exception):
    """The service could not be reached or answered with errors; try again later."""


class _RateLimited(_Transient):
    """The service refused a request for its rate limit; nothing was created."""


class _NotFound(Exception):
    """The service does not know this id (deleted, expired, or another account's)."""


class _BadResult(Exception):
    """A job finished but its result cannot be read as a measurement."""


def one_line(text: Any, secret: str | None = None) -> str:
    """A message of the service or client as one line: boxes drawn around it removed, JSON
    `{"detail": ...}` unwrapped, whitespace collapsed, the token (if it ever appeared) masked."""
    raw = str(text)
    try:
        detail = json.loads(raw)
        if isinstance(detail, dict) and "detail" in detail:
            raw = str(detail["detail"])
    except ValueError:
        pass
    words = " ".join(line.strip(_BOX) for line in raw.splitlines())
    words = re.sub(r"\s+", " ", words).strip()
    if secret:
        words = words.replace(secret, "***")
    return words[:400] or "no message"


def load_config(client_ini: str | Path | None = None) -> tuple[Any, str]:
    """The client's configuration (verbose off) and the file it came from; DeviceError when no
    token is configured. The token stays inside the returned ClientConfig."""
    import configparser

    from qai_hub import api_utils
    from qai_hub.public_rest_api import APIException

    path = str(client_ini) if client_ini else api_utils.get_config_path()
    try:
        config = api_utils.load_api_config_from_file(path)
    except FileNotFoundError:
        raise DeviceError(f"no AI Hub API token configured ({path} not found): {CONFIGURE_HINT}") from None
    except (APIException, configparser.Error):
        raise DeviceError(f"{path} is not a usable AI Hub client.ini (it needs api_token, api_url and web_url in "
                          f"an [api] section): {CONFIGURE_HINT}") from None
    if not config.api_token.strip():
        raise DeviceError(f"the AI Hub API token in {path} is empty: {CONFIGURE_HINT}")
    return dataclasses.replace(config, verbose=False), path


def _unit_name(value: int) -> str:
    from qai_hub import public_api_pb2 as pb

    return pb.ComputeUnit.Name(value).removeprefix("COMPUTE_UNIT_")


def _token_refused(config: Any) -> str:
    return f"AI Hub refused the configured API token (401, bad or expired) at {config.api_url}: {CONFIGURE_HINT}"


def _too_old(detail: str) -> str:
    import qai_hub

    return (f"AI Hub no longer accepts this client, qai-hub {qai_hub.__version__} (426: {detail}); "
            "install a latbench whose [aihub] extra pins a newer qai-hub")


def _call(config: Any, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A `qai_hub.public_rest_api` function (the raw protobuf answers), its failures turned into
    latbench's: DeviceError (token, client too old, refused), _RateLimited, _Transient, _NotFound."""
    import requests
    from qai_hub import public_rest_api as api

    try:
        return fn(config, *args, **kwargs)
    except api.APIException as e:
        status, detail = e.status_code, one_line(e, config.api_token)
        if status == 401:
            raise DeviceError(_token_refused(config)) from None
        if status == 426:
            raise DeviceError(_too_old(detail)) from None
        if status == 429:
            raise _RateLimited(f"{what}: rate limited by AI Hub") from None
        if status == 404:
            raise _NotFound(detail) from None
        if status is None or status >= 500:
            raise _Transient(f"{what}: AI Hub answered {status or 'an error'}: {detail}") from None
        raise DeviceError(f"AI Hub refused {what} ({status}): {detail}") from None
    except requests.exceptions.RetryError as e:  # urllib3 gave up retrying 429 / 5xx answers
        raise _Transient(f"{what}: AI Hub kept answering with errors ({one_line(e, config.api_token)})") from None
    except requests.exceptions.RequestException as e:
        raise _Transient(f"{what}: cannot reach AI Hub at {config.api_url} ({first_line(e)})") from None

"""Where a model's API key may go: each provider's official API and the opt-in rule for any other
host (issue 9, "keys can leave their provider").

An `openai` model sends OPENAI_API_KEY and an `openrouter` model OPENROUTER_API_KEY to its
base URL, so that URL is either the provider's own (HTTPS), or a host the operator opted in to for
that model (`custom_host`), over HTTPS unless it is this machine (loopback). A `compatible`
model's key (PROMPTBATCH_COMPATIBLE_API_KEY) is meant for its own server: any http(s) URL.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from db.errors import InvalidInput
from db.types import Provider

OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_BASE_URLS = {Provider.OPENAI: OPENAI_BASE_URL, Provider.OPENROUTER: OPENROUTER_BASE_URL}
# OpenAI's data-residency hosts are subdomains of api.openai.com (e.g. eu.api.openai.com).
_OFFICIAL_HOSTS = {Provider.OPENAI: "api.openai.com", Provider.OPENROUTER: "openrouter.ai"}


def base_url_for(provider: str, base_url: str | None) -> str | None:
    """The URL the SDK is given: the model's own, else its provider's official API (None for a
    compatible model without one, which check_endpoint refuses)."""
    return base_url or DEFAULT_BASE_URLS.get(Provider(provider))


def is_official(provider: str, base_url: str) -> bool:
    """Whether `base_url` is `provider`'s own API host (https is checked separately)."""
    official = _OFFICIAL_HOSTS.get(Provider(provider))
    host = (urlsplit(base_url).hostname or "").rstrip(".").lower()
    return official is not None and (host == official or host.endswith(f".{official}"))


def is_loopback(base_url: str) -> bool:
    """Whether `base_url`'s host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(base_url).hostname or "").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(provider: str, base_url: str | None, custom_host: bool) -> None:
    """Raise InvalidInput (one line) unless the provider's key may be sent to `base_url`.

    Rules: a URL is http(s) with a host and no credentials, query or fragment; an openai or
    openrouter model goes to its provider's host over HTTPS, or, with `custom_host`, to another
    host over HTTPS or to loopback; a compatible model needs a URL, and `custom_host` is not for it.
    """
    if provider not in {p.value for p in Provider}:
        raise InvalidInput(f"unknown provider {provider!r}: use openai, openrouter or compatible")
    if base_url is not None:
        _check_shape(base_url)
    if provider == Provider.COMPATIBLE:
        if not base_url:
            raise InvalidInput(
                "a compatible model needs --base-url (e.g. http://127.0.0.1:8000/v1)"
            )
        if custom_host:
            raise InvalidInput(
                "--custom-host is for openai and openrouter models; a compatible model's key "
                "always goes to its own base URL"
            )
        return
    if base_url is None:
        return
    _check_key_destination(provider, base_url, custom_host)


def _check_shape(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in base_url:
        raise InvalidInput(
            f"base URL must be an http:// or https:// URL with a host, got {base_url!r}"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput(
            f"base URL must not carry credentials, a query or a fragment, got {base_url!r}"
        )


def _check_key_destination(provider: str, base_url: str, custom_host: bool) -> None:
    https = urlsplit(base_url).scheme == "https"
    if is_official(provider, base_url):
        if not https:
            raise InvalidInput(f"{provider} is called over https only, got {base_url!r}")
        return
    if not custom_host:
        raise InvalidInput(
            f"{base_url!r} is not {provider}'s API: its API key would go there; pass "
            f"--custom-host to allow that host for this model"
        )
    if not https and not is_loopback(base_url):
        raise InvalidInput(
            f"a custom host for {provider} must use https (plain http only on loopback), "
            f"got {base_url!r}"
        )

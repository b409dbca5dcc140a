"""MSAL wiring: confidential client applications, their HTTP session, and MSAL's outcomes
mapped onto the provider errors.

Everything here is synchronous (MSAL is) and is called from worker threads.

* One ``ConfidentialClientApplication`` per authority, built lazily on first use: building one
  runs OpenID discovery over the network, so a broker started while Entra is unreachable still
  starts, and a failed build is simply retried by the next sign-in. A single-tenant provider
  has exactly one; with ``allowed_tenants`` sign-in goes through ``/organizations`` and each
  tenant gets its own application for app-only Microsoft Graph calls.
* MSAL's HTTP cache keeps a failed token request for 60 s (HTTP 400) or for ``Retry-After``
  (429/5xx), per application instance. With one long-lived instance that would turn one bad
  answer into a minute of refused refreshes, so the cache given to MSAL keeps successful
  answers only (discovery documents); every failure is seen by exactly one request.
* MSAL's token cache would keep every user's tokens in memory for the life of the process; the
  cache given to MSAL keeps app-only (client credentials) tokens only. User tokens are used
  once, during the callback, and dropped.
* The HTTP session trusts the configured CA file (or certifi), never the environment:
  ``trust_env`` is off so ``REQUESTS_CA_BUNDLE`` and proxy variables cannot change where the
  broker sends its client secret or whom it trusts.
* Instance discovery is off: it asks ``login.microsoftonline.com`` whether the authority host
  is a Microsoft cloud, which is meaningless for a host the operator configured on purpose
  (sovereign clouds, tests) and an extra dependency on the public cloud.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import certifi
import msal
import requests

from providers.base import ProviderError, UpstreamRejected, UpstreamUnavailable
from providers.entra.config import EntraProviderConfig

# The broker's callback is a GET bound to a SameSite=Lax cookie, which a cross-site form_post
# would not carry; the code in the query is useless without the PKCE verifier and the client
# credential, both held here. MSAL warns about query mode on every sign-in: silence that one.
warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended", category=UserWarning)


class SignInExpired(UpstreamRejected):
    """Entra refused the authorization code: too old, already redeemed, or not ours."""

    public = "This sign-in took too long or was already completed. Return to the application and start again."


class _Session(requests.Session):
    """A requests session with a default time-out, a fixed CA bundle and no environment."""

    def __init__(self, *, verify: str, timeout: float, proxy: str | None) -> None:
        super().__init__()
        self.trust_env = False
        self.verify = verify
        self.proxies = {"http": proxy, "https": proxy} if proxy else {}
        self._timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


class _SuccessOnlyHttpCache(dict[str, Any]):
    """MSAL ``http_cache`` that stores successful responses only (see the module docstring)."""

    def __setitem__(self, key: str, value: Any) -> None:
        status = getattr(value, "status_code", None)
        if isinstance(status, int) and not 200 <= status < 300:
            return
        super().__setitem__(key, value)


class _AppTokensOnly(msal.TokenCache):  # type: ignore[misc]
    """MSAL token cache that remembers app-only tokens and forgets user tokens."""

    def add(self, event: dict[str, Any], now: Any = None) -> Any:
        if event.get("grant_type") != "client_credentials":
            return None
        return super().add(event, now=now)


def _first_line(text: object, limit: int = 300) -> str:
    line = str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""
    return line[:limit]


def _credential(config: EntraProviderConfig) -> str | dict[str, str]:
    if config.client_secret is not None:
        return config.client_secret.get_secret_value()
    assert config.client_certificate_file is not None  # the config model guarantees one of the two
    pem = Path(config.client_certificate_file).read_text()
    key = re.search(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----.+?-----END (?:[A-Z]+ )?PRIVATE KEY-----", pem, re.S)
    cert = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if key is None or cert is None:
        raise UpstreamUnavailable(f"{config.client_certificate_file} must hold a PEM private key and certificate")
    credential = {"private_key": key.group(0), "public_certificate": cert.group(0)}
    if config.client_certificate_thumbprint:
        credential["thumbprint"] = config.client_certificate_thumbprint
    if config.client_certificate_password is not None:
        credential["passphrase"] = config.client_certificate_password.get_secret_value()
    return credential


def _transport_error(what: str, exc: Exception) -> ProviderError:
    """An exception raised inside MSAL, as a provider error with a log-worthy message."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, requests.RequestException):
        return UpstreamUnavailable(f"{what}: Entra unreachable: {type(exc).__name__}: {_first_line(exc, 200)}")
    if isinstance(exc, msal.exceptions.MsalServiceError):  # 5xx from the token endpoint
        return UpstreamUnavailable(f"{what}: Entra answered {_first_line(exc, 100)}")
    if isinstance(exc, json.JSONDecodeError):
        return UpstreamUnavailable(f"{what}: Entra answered something that is not JSON")
    return UpstreamUnavailable(f"{what}: {type(exc).__name__}: {_first_line(exc, 200)}")


def token_error(what: str, result: dict[str, Any], *, user_flow: bool) -> ProviderError:
    """An OAuth error answer from the token endpoint as a provider error.

    ``error_description`` holds an AADSTS code and trace ids, never a token or secret; only its
    first line is kept.
    """
    error = str(result.get("error", "unknown_error"))[:64]
    detail = f"{what}: Entra answered {error}: {_first_line(result.get('error_description'))}"
    if error in ("invalid_client", "unauthorized_client"):
        return UpstreamUnavailable(detail + " (check the client secret or certificate and the app registration)")
    if error in ("temporarily_unavailable", "server_error") or not user_flow:
        return UpstreamUnavailable(detail)
    if error == "invalid_grant":
        return SignInExpired(detail)
    return UpstreamRejected(detail)


class MsalApps:
    """The provider's confidential client applications, one per authority (tenant or
    ``organizations``), built on first use and kept for the life of the provider."""

    def __init__(self, config: EntraProviderConfig) -> None:
        self.config = config
        self.authority_host = str(config.authority_host).rstrip("/")
        self.session = _Session(
            verify=config.ca_file or certifi.where(),
            timeout=config.timeout,
            proxy=str(config.proxy) if config.proxy else None,
        )
        self._apps: dict[str, Any] = {}
        self._lock = threading.Lock()

    def app(self, tenant: str) -> Any:
        """The application for ``tenant``; raises UpstreamUnavailable when it cannot be built."""
        with self._lock:
            app = self._apps.get(tenant)
            if app is not None:
                return app
            try:
                app = msal.ConfidentialClientApplication(
                    self.config.client_id,
                    client_credential=_credential(self.config),
                    authority=f"{self.authority_host}/{tenant}",
                    http_client=self.session,
                    http_cache=_SuccessOnlyHttpCache(),
                    token_cache=_AppTokensOnly(),
                    instance_discovery=False,
                    exclude_scopes=["offline_access"],  # no upstream refresh token: refresh uses app-only Graph
                )
            except Exception as exc:  # discovery failed, unreadable certificate, ...
                raise _transport_error(f"discovery of {self.authority_host}/{tenant}", exc) from None
            self._apps[tenant] = app
            return app

    def start(self, tenant: str, scopes: list[str], redirect_uri: str, state: str) -> dict[str, Any]:
        """Begin an authorization code flow with PKCE and nonce; the flow dict is JSON-serialisable."""
        app = self.app(tenant)
        try:
            flow: dict[str, Any] = app.initiate_auth_code_flow(scopes, redirect_uri=redirect_uri, state=state)
        except Exception as exc:
            raise _transport_error("starting the sign-in", exc) from None
        return flow

    def redeem(self, tenant: str, flow: dict[str, Any], response: dict[str, str]) -> dict[str, Any]:
        """Redeem the authorization code (MSAL checks state and the nonce; not the signature)."""
        app = self.app(tenant)
        try:
            result: dict[str, Any] = app.acquire_token_by_auth_code_flow(dict(flow), dict(response))
        except RuntimeError:  # MSAL's nonce check; its message would repeat both values
            raise UpstreamRejected("ID token nonce does not match the sign-in request") from None
        except json.JSONDecodeError:
            raise UpstreamUnavailable("redeeming the code: Entra answered something that is not JSON") from None
        except ValueError as exc:  # state missing or different, scope mismatch
            reason = _first_line(exc, 200).split(":")[0]  # "state mismatch: a vs b" -> "state mismatch"
            raise UpstreamRejected(f"MSAL refused the callback: {reason}") from None
        except Exception as exc:
            raise _transport_error("redeeming the code", exc) from None
        if "error" in result:
            raise token_error("redeeming the code", result, user_flow=True)
        return result

    def app_token(self, tenant: str, scopes: list[str]) -> str:
        """An app-only access token (client credentials), from MSAL's cache while it is valid."""
        app = self.app(tenant)
        try:
            result: dict[str, Any] = app.acquire_token_for_client(scopes)
        except Exception as exc:
            raise _transport_error(f"app-only token for tenant {tenant}", exc) from None
        if "error" in result or not isinstance(result.get("access_token"), str):
            raise token_error(f"app-only token for tenant {tenant}", result, user_flow=False)
        token: str = result["access_token"]
        return token

    def close(self) -> None:
        self.session.close()

"""A client of the resident categoriser (`newsllm categorizer-server`): what `RemoteCategorizerResource` loads in a
pipeline run instead of a model. Plain `requests`, no torch."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import requests

from . import CategorizationError, Prediction
from .wire import CATEGORIZE_PATH, TOKEN_VARIABLE, result_from_body

log = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({502, 503, 504})  # a proxy between restarts, a full queue


class CategorizerServerError(Exception):
    """The server could not be reached, gave no answer in time, or answered with an error (its reason
    included). A batch that meets one fails whole: its claims are given back for a later run."""


class CategorizerClient:
    """`categorize(texts)` on a categoriser server; a request that cannot reach it, times out or finds its queue
    full is tried `retries` more times, a second apart and then two, four…"""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 120.0, retries: int = 2):
        self.url = url.rstrip("/")
        self.timeout_s, self.retries = timeout_s, retries
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"  # kept out of repr and messages

    def __repr__(self) -> str:
        return f"CategorizerClient(url={self.url!r})"

    def status(self) -> dict:
        """The server's model, backend, device, categories, adapter and request counts."""
        return self._call("GET", "/status")

    def categorize(self, texts: Sequence[str]) -> list[Prediction | CategorizationError]:
        """One result per text, in order, as the in-process categoriser gives them."""
        body = self._call("POST", CATEGORIZE_PATH, json={"texts": list(texts)})
        results = body.get("results")
        if not isinstance(results, list) or len(results) != len(texts):
            raise CategorizerServerError(f"{self.url}{CATEGORIZE_PATH}: not one result per text in the answer")
        try:
            return [result_from_body(result) for result in results]
        except (KeyError, TypeError) as error:
            raise CategorizerServerError(f"{self.url}{CATEGORIZE_PATH}: a malformed result ({error!r})") from error

    def _call(self, method: str, path: str, **kwargs) -> dict:
        url, attempt = self.url + path, 0
        while True:
            last = attempt == self.retries
            try:
                response = self._session.request(method, url, timeout=self.timeout_s, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as error:
                if last:
                    raise CategorizerServerError(self._unreachable(url, error)) from error
            else:
                if last or response.status_code not in RETRIED_STATUSES:
                    return _answer(url, response)
            log.warning("%s %s: attempt %d of %d failed, retrying", method, url, attempt + 1, self.retries + 1)
            time.sleep(2**attempt)
            attempt += 1

    def _unreachable(self, url: str, error: requests.RequestException) -> str:
        if isinstance(error, requests.ConnectionError):  # a connect timeout included
            return (
                f"no categoriser server at {self.url}: start one with `newsllm categorizer-server` or set "
                "NEWSLLM_CATEGORIZER_URL"
            )
        return f"{url} gave no answer within {self.timeout_s:g} s"


def _answer(url: str, response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.ok and isinstance(body, dict):
        return body
    reason = body.get("error") if isinstance(body, dict) else None
    if response.status_code == 401:
        reason = f"{reason}: give the server's {TOKEN_VARIABLE} to the pipeline (the same variable)"
    raise CategorizerServerError(f"{url}: HTTP {response.status_code}: {reason or response.text[:300]}")

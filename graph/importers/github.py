"""GitHub stars of a model's code repository, read through GitHub's REST API (``GET /repos/{owner}/{repo}``).

The answer's ``stargazers_count`` becomes an adoption reading of kind "stars", dated the day it was
read and citing the API URL; ``merge`` adds it to a catalogue record like the Hub importer does
(the store keeps earlier readings as history). The endpoint is the one given, else
``GITHUB_API_URL``, else https://api.github.com.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import urllib.error
import urllib.request
from dataclasses import replace

from common.errors import InvalidArgument, NotFound, Unavailable
from graph.records import ModelRecord, Signal

DEFAULT_ENDPOINT = "https://api.github.com"


def read_stars(repo: str, endpoint: str = "", today: str = "", timeout_s: float = 30.0) -> Signal:
    """The stars reading of ``owner/name`` (NotFound for an unknown repository, Unavailable when unreachable)."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InvalidArgument(f"GitHub repository {repo!r} must look like owner/name")
    base = (endpoint or os.environ.get("GITHUB_API_URL") or DEFAULT_ENDPOINT).rstrip("/")
    url = f"{base}/repos/{repo}"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.github+json",
                                               "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "unfragile"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise NotFound(f"GitHub at {base} has no repository {repo!r}") from None
        raise Unavailable(f"GitHub at {base} answered {exc.code} for {repo!r}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unavailable(f"GitHub at {base} could not be read for {repo!r}: {exc}") from None
    stars = body.get("stargazers_count")
    if not isinstance(stars, int) or isinstance(stars, bool):
        raise Unavailable(f"GitHub at {base} gave no stargazers_count for {repo!r}")
    return Signal("stars", float(stars), url, today or _dt.datetime.now(_dt.UTC).date().isoformat(),
                  f"stargazers_count: {stars}")


def merge(record: ModelRecord, stars: Signal) -> ModelRecord:
    """``record`` with ``stars`` in place of its earlier reading from the same source."""
    return replace(record, adoption=tuple(s for s in record.adoption if s.source != stars.source) + (stars,))

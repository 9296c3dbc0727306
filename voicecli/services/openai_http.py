"""One HTTP client for every OpenAI service on an event loop.

Each pipecat OpenAI service builds its own `AsyncOpenAI`, and with it an httpx client and an
SSL context: 37-120 ms on the event loop per service at call set-up, heard as late audio on
every call already talking (bench/README.md). Sharing one client (and its connection pool)
makes set-up cost 1-2 ms. pipecat never closes a client it was given, so sharing is safe.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from openai import AsyncOpenAI, DefaultAsyncHttpxClient
from pipecat.services.openai.llm import OpenAILLMService

# Per event loop: an httpx pool's connections belong to the loop that opened them.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def shared_http_client() -> Any:
    """The running loop's shared httpx client (pipecat's LLM pool limits); None off a loop."""
    try:  # the library the openai SDK builds its clients on: httpx2 since 3.x, httpx before
        from httpx2 import Limits
    except ImportError:
        from httpx import Limits  # type: ignore[assignment]

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # built outside a call (a check, a script): the SDK's own client
        return None
    client = _clients.get(loop)
    if client is None:
        limits = Limits(max_keepalive_connections=100, max_connections=1000, keepalive_expiry=None)
        client = _clients[loop] = DefaultAsyncHttpxClient(limits=limits)
    return client


class SharedClientOpenAILLMService(OpenAILLMService):
    """pipecat's OpenAI LLM, on the shared client (it ignores an `http_client` argument)."""

    def create_client(
        self,
        api_key: Any = None,
        base_url: Any = None,
        organization: Any = None,
        project: Any = None,
        default_headers: Any = None,
        **kwargs: Any,
    ) -> AsyncOpenAI:  # pipecat's signature, untyped there
        return AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            http_client=shared_http_client(),
            default_headers=default_headers,
        )

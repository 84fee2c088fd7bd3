"""A fake Discord gateway + REST API on 127.0.0.1 for end-to-end adapter tests.

Why: the real ``discord.Client`` (login, gateway handshake, heartbeats, rate-limit
retries, multipart uploads) should be exercised without Discord. Only two URLs are
patched (``patch_discord_urls``): ``discord.http.Route.BASE`` (every REST call, including
interaction callbacks and webhooks, is built from it) and
``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (discord.py 2.7's ``Client.connect``
no longer asks ``GET /gateway/bot``; only ``AutoShardedClient`` does, and that route
answers with this server's ws:// URL too).

Gateway: HELLO -> (client heartbeat, ACK) -> IDENTIFY (recorded) -> READY (guilds
unavailable) -> one GUILD_CREATE per guild. Frames are zlib-stream compressed when the
client asks for ``compress=zlib-stream`` (discord.py does by default) and plain JSON text
otherwise. Sharded clients (IDENTIFY with ``shard: [id, count]``) get only their shard's guilds, and
``dispatch(..., shard=k)`` sends an event on shard k's connection. REQUEST_GUILD_MEMBERS gets a single GUILD_MEMBERS_CHUNK; RESUME gets RESUMED.

Typical use::

    async with FakeDiscordServer() as server:
        client = discord.Client(intents=default_intents())
        async with connected_client(server, client):
            await server.dispatch("MESSAGE_CREATE", message_payload(...))
            req = await server.wait_for_request("POST", r"/channels/\\d+/messages")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import discord
import yarl
from aiohttp import BodyPartReader, WSMsgType, hdrs, web
from discord.gateway import DiscordWebSocket
from discord.http import Route

from tests.fakes.discord_payloads import (
    FakeRestBackend,
    Payload,
    RecordedRequest,
    RestReply,
    UploadedFile,
    bot_user_payload,
    default_guild_payload,
)

HELLO, IDENTIFY, HEARTBEAT, HEARTBEAT_ACK, RESUME, RECONNECT, REQUEST_MEMBERS = 10, 2, 1, 11, 6, 7, 8


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: float
    times: int
    is_global: bool
    body: Any


class _GatewayConnection:
    """One client websocket; owns the zlib stream so frames decode in order."""

    def __init__(self, ws: web.WebSocketResponse, *, compress: bool) -> None:
        self.ws = ws
        self._zlib = zlib.compressobj() if compress else None
        self.session_id: str | None = None
        self.shard: tuple[int, int] = (0, 1)  # (id, count) from its IDENTIFY
        self.sync_waiters: list[asyncio.Future[None]] = []

    async def send(self, payload: Payload) -> None:
        data = json.dumps(payload)
        if self._zlib is None:
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(self._zlib.compress(data.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH))


class FakeDiscordServer:
    """Fake Discord gateway + REST server (aiohttp) recording everything it receives.

    ``requests`` lists every REST call as ``RecordedRequest`` (method, path without
    ``/api/v10``, query, headers, JSON or ``payload_json``, multipart ``files`` with
    bytes, response status/body). Answers come from ``backend`` (``FakeRestBackend``),
    except failures injected with ``fail_next``. Gateway frames received from the client
    are in ``gateway_received``; IDENTIFY payloads in ``identifies``.
    """

    def __init__(
        self,
        *,
        bot_user: Payload | None = None,
        application_id: int | None = None,
        guilds: Sequence[Payload] | None = None,
        heartbeat_interval_ms: int = 41250,
        compress: bool = True,
        host: str = "127.0.0.1",
        backend: FakeRestBackend | None = None,
    ) -> None:
        self.bot_user = bot_user or bot_user_payload()
        self.guilds: list[Payload] = (
            list(guilds) if guilds is not None else [default_guild_payload(self.bot_user)]
        )
        self.backend = backend or FakeRestBackend(
            bot_user=self.bot_user, application_id=application_id, guilds=self.guilds
        )
        self.application_id = self.backend.application_id
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.compress = compress
        self.host = host
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.identifies: list[Payload] = []
        self.resumes: list[Payload] = []
        self.gateway_received: list[Payload] = []
        self.session_id: str | None = None  # issued in the last READY
        self._failures: list[_Failure] = []
        self._connections: list[_GatewayConnection] = []
        self._current: _GatewayConnection | None = None
        self._by_shard: dict[int, _GatewayConnection] = {}
        self._session_shards: dict[str, tuple[int, int]] = {}
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Condition | None = None
        self._ready_sent: asyncio.Event | None = None

    # -- lifecycle -----------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """Value patched into ``Route.BASE``."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """Value patched into ``DiscordWebSocket.DEFAULT_GATEWAY`` and sent as ``resume_gateway_url``."""
        return f"ws://{self.host}:{self.port}/gateway"

    async def start(self) -> FakeDiscordServer:
        """Bind a free port and serve."""
        self._changed = asyncio.Condition()
        self._ready_sent = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway_handler)
        app.router.add_get("/cdn/{tail:.*}", self._cdn_handler)
        app.router.add_route("*", "/api/v{version:\\d+}/{tail:.*}", self._rest_handler)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.backend.gateway_url = self.gateway_url
        self.backend.cdn_base = f"{self.base_url}/cdn"
        return self

    async def stop(self) -> None:
        """Close gateway sockets (1001) and shut the server down."""
        for conn in list(self._connections):
            if not conn.ws.closed:
                await conn.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscordServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- test controls: gateway ----------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a client websocket is open."""
        return self._current is not None and not self._current.ws.closed

    def _conn(self, shard: int | None = None) -> _GatewayConnection:
        conn = self._current if shard is None else self._by_shard.get(shard)
        if conn is None or conn.ws.closed:
            raise RuntimeError(f"no client connected to the fake gateway (shard {shard})")
        return conn

    @staticmethod
    def shard_of(guild_id: int | str | None, shard_count: int) -> int:
        """Discord's rule: a server's events go to shard (guild_id >> 22) % shard_count; DMs to shard 0."""
        return 0 if guild_id is None else (int(guild_id) >> 22) % shard_count

    def connected_shards(self) -> dict[int, int]:
        """Shard id -> shard count, for every shard whose websocket is open."""
        return {sid: conn.shard[1] for sid, conn in self._by_shard.items() if not conn.ws.closed}

    async def _send_dispatch(self, conn: _GatewayConnection, event: str, data: Any) -> int:
        self._seq += 1
        await conn.send({"op": 0, "t": event, "s": self._seq, "d": data})
        return self._seq

    async def dispatch(
        self, event: str, payload: Payload, *, sync: bool = True, shard: int | None = None
    ) -> int:
        """Send a DISPATCH (op 0) event, e.g. ``"MESSAGE_CREATE"``; returns its sequence.

        With ``sync`` this returns once the client has *parsed* it (see ``sync``); the
        handler tasks it spawned may still be running, so await their REST effects with
        ``wait_for_request``. ``shard`` sends it on that shard's connection (as Discord
        does: see ``shard_of``); without, on the latest connection.
        """
        if event == "INTERACTION_CREATE":
            self.backend.register_interaction(payload)
        seq = await self._send_dispatch(self._conn(shard), event, payload)
        if sync:
            await self.sync(shard=shard)
        return seq

    async def sync(self, timeout: float = 5.0, *, shard: int | None = None) -> None:  # noqa: ASYNC109
        """Barrier: ask for a heartbeat (op 1) and wait for it.

        Why: the client handles frames in order, so its answer proves every earlier
        frame was parsed (the periodic heartbeat interval is long enough not to interfere).
        """
        conn = self._conn(shard)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.sync_waiters.append(fut)
        await conn.send({"op": HEARTBEAT, "d": None})
        await asyncio.wait_for(fut, timeout)

    async def wait_for_identify(self, timeout: float = 10.0) -> Payload:  # noqa: ASYNC109
        """Wait until READY and GUILD_CREATEs were sent for an IDENTIFY; returns its ``d``."""
        assert self._ready_sent is not None, "server not started"
        await asyncio.wait_for(self._ready_sent.wait(), timeout)
        return self.identifies[-1]

    async def wait_for_shards(self, shards: set[int], timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until each of ``shards`` has IDENTIFYed and got its READY and GUILD_CREATEs."""
        assert self._changed is not None, "server not started"
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: shards <= set(self.connected_shards()))

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT; discord.py reconnects and RESUMEs (recorded in ``resumes``)."""
        await self._conn().send({"op": RECONNECT, "d": None})

    async def close_gateway(self, code: int = 4000) -> None:
        """Drop the websocket with ``code`` (4000 = resumable, 4004 = auth failed ...)."""
        await self._conn().ws.close(code=code)

    # -- test controls: REST -----------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 429,
        retry_after: float = 0.1,
        times: int = 1,
        *,
        is_global: bool = False,
        body: Any = None,
    ) -> None:
        """Answer the next ``times`` matching requests with an error.

        429s carry Discord's JSON body (``retry_after``, ``global``) and headers
        (``Retry-After``, ``X-RateLimit-*``, ``Via``; discord.py treats a 429 without
        ``Via`` as a Cloudflare ban and does not retry). The failed attempts are still
        recorded in ``requests`` with their status.
        """
        self._failures.append(
            _Failure(method.upper(), re.compile(path_regex), status, retry_after, times, is_global, body)
        )

    def find_requests(
        self, method: str | None = None, path_regex: str | None = None
    ) -> list[RecordedRequest]:
        """Recorded REST requests matching ``method`` and the whole-path ``path_regex``."""
        return [r for r in self.requests if r.matches(method, path_regex)]

    async def wait_for_request(
        self,
        method: str,
        path_regex: str,
        timeout: float = 10.0,  # noqa: ASYNC109
        *,
        since: int = 0,
        status: int | None = None,
    ) -> RecordedRequest:
        """First request at index >= ``since`` matching method/path (and ``status``).

        Pass ``since=len(server.requests)`` to ignore earlier traffic.
        """
        assert self._changed is not None, "server not started"

        def find() -> RecordedRequest | None:
            for req in self.requests[since:]:
                if req.matches(method, path_regex) and (status is None or req.status == status):
                    return req
            return None

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: find() is not None), timeout)
        except TimeoutError:
            seen = [(r.method, r.path, r.status) for r in self.requests[since:]]
            raise TimeoutError(f"no {method} {path_regex} within {timeout}s; got {seen}") from None
        found = find()
        assert found is not None
        return found

    # -- handlers ------------------------------------------------------------

    async def _record(self, req: RecordedRequest) -> None:
        self.requests.append(req)
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def _take_failure(self, req: RecordedRequest) -> RestReply | None:
        for failure in self._failures:
            if failure.method == req.method and failure.pattern.fullmatch(req.path):
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                return self._failure_reply(failure)
        return None

    @staticmethod
    def _failure_reply(failure: _Failure) -> RestReply:
        if failure.status != 429:
            body = failure.body if failure.body is not None else {"message": "Injected failure", "code": 0}
            return RestReply(failure.status, body)
        ra = failure.retry_after
        body = failure.body or {
            "message": "You are being rate limited.",
            "retry_after": ra,
            "global": failure.is_global,
        }
        headers = {
            "Retry-After": f"{ra:g}",
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + ra:.3f}",
            "X-RateLimit-Reset-After": f"{ra:.3f}",
            "X-RateLimit-Bucket": f"fake-{abs(hash(failure.pattern.pattern)):x}",
            "X-RateLimit-Scope": "global" if failure.is_global else "user",
            "Via": "1.1 google",
        }
        if failure.is_global:
            headers["X-RateLimit-Global"] = "true"
        return RestReply(429, body, headers)

    async def _rest_handler(self, request: web.Request) -> web.StreamResponse:
        req = RecordedRequest(
            method=request.method.upper(),
            path="/" + request.match_info["tail"],
            query=dict(request.query),
            headers=dict(request.headers),
        )
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):  # nested multipart: not used by discord.py
                    continue
                data = bytes(await part.read(decode=False))
                name = part.name or ""
                if part.filename is not None:
                    req.files.append(
                        UploadedFile(name, part.filename, part.headers.get(hdrs.CONTENT_TYPE), data)
                    )
                elif name == "payload_json":
                    req.json = json.loads(data)
                else:
                    req.form[name] = data.decode()
        else:
            raw = await request.read()
            if raw:
                try:
                    req.json = json.loads(raw)
                except ValueError:
                    req.form["_raw"] = raw.decode(errors="replace")
        reply = self._take_failure(req)
        if reply is not None:
            req.status, req.response = reply.status, reply.body
        else:
            reply = self.backend.handle(req)
        await self._record(req)
        if reply.status == 204 or reply.body is None:
            return web.Response(status=reply.status, headers=reply.headers)
        # discord.py decodes JSON only when content-type is exactly "application/json"
        headers = {"Content-Type": "application/json", **reply.headers}
        return web.Response(status=reply.status, body=json.dumps(reply.body).encode(), headers=headers)

    async def _cdn_handler(self, request: web.Request) -> web.StreamResponse:
        url = f"{self.base_url}{request.path}"
        await self._record(RecordedRequest("GET", request.path, status=200))
        data = self.backend.cdn.get(url)
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def _gateway_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        compress = self.compress and request.query.get("compress") == "zlib-stream"
        conn = _GatewayConnection(ws, compress=compress)
        self._connections.append(conn)
        self._current = conn
        try:
            await conn.send({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_frame(conn, json.loads(msg.data))
                elif msg.type is WSMsgType.BINARY:  # discord.py never sends binary frames
                    await self._on_frame(conn, json.loads(msg.data.decode()))
        finally:
            for fut in conn.sync_waiters:
                if not fut.done():
                    fut.set_exception(ConnectionError("gateway connection closed"))
            self._connections.remove(conn)
            if self._current is conn:
                self._current = None
            if self._by_shard.get(conn.shard[0]) is conn:
                del self._by_shard[conn.shard[0]]
        return ws

    async def _on_frame(self, conn: _GatewayConnection, frame: Payload) -> None:
        self.gateway_received.append(frame)
        op, data = frame.get("op"), frame.get("d")
        if op == HEARTBEAT:
            await conn.send({"op": HEARTBEAT_ACK})
            waiters, conn.sync_waiters = conn.sync_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        elif op == IDENTIFY:
            self.identifies.append(data)
            sid, count = data.get("shard") or (0, 1)
            conn.shard = (int(sid), int(count))
            conn.session_id = self.session_id = uuid.uuid4().hex
            guilds = [g for g in self.guilds if self.shard_of(g["id"], conn.shard[1]) == conn.shard[0]]
            await self._send_dispatch(conn, "READY", self._ready_payload(conn.session_id, conn.shard, guilds))
            for guild in guilds:
                await self._send_dispatch(conn, "GUILD_CREATE", guild)
            self._by_shard[conn.shard[0]] = conn
            self._session_shards[conn.session_id] = conn.shard
            assert self._changed is not None
            async with self._changed:
                self._changed.notify_all()
            assert self._ready_sent is not None
            self._ready_sent.set()
        elif op == RESUME:
            self.resumes.append(data)
            conn.session_id = data.get("session_id")
            conn.shard = self._session_shards.get(str(conn.session_id), (0, 1))
            self._by_shard[conn.shard[0]] = conn
            await self._send_dispatch(conn, "RESUMED", {})
        elif op == REQUEST_MEMBERS:
            await self._send_member_chunk(conn, data)

    def _ready_payload(self, session_id: str, shard: tuple[int, int], guilds: list[Payload]) -> Payload:
        return {
            "v": 10,
            "user": self.bot_user,
            "shard": list(shard),
            "guilds": [{"id": g["id"], "unavailable": True} for g in guilds],
            "session_id": session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 1 << 19},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "geo_ordered_rtc_regions": [],
            "_trace": ['["fake-gateway",{"micros":0}]'],
        }

    async def _send_member_chunk(self, conn: _GatewayConnection, data: Payload) -> None:
        gid = str(data.get("guild_id"))
        guild = next((g for g in self.guilds if g["id"] == gid), {"members": []})
        members = list(guild.get("members", []))
        if data.get("user_ids"):
            wanted = {str(u) for u in data["user_ids"]}
            members = [m for m in members if m["user"]["id"] in wanted]
        elif data.get("query"):
            q = str(data["query"]).lower()
            members = [m for m in members if m["user"]["username"].lower().startswith(q)]
        if data.get("limit"):
            members = members[: int(data["limit"])]
        chunk: Payload = {
            "guild_id": gid,
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(conn, "GUILD_MEMBERS_CHUNK", chunk)


@contextlib.contextmanager
def patch_discord_urls(server: FakeDiscordServer) -> Iterator[None]:
    """Point discord.py's REST base and default gateway at ``server``; restore on exit."""
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = server.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(server.gateway_url)
    try:
        yield
    finally:
        Route.BASE = old_base
        DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


@contextlib.asynccontextmanager
async def connected_client(
    server: FakeDiscordServer,
    client: discord.Client,
    *,
    token: str = "fake-token",
    ready_timeout: float = 10.0,
    fast_ready: bool = True,
) -> AsyncIterator[discord.Client]:
    """Run ``client.start`` against ``server`` until ``on_ready``; close it cleanly on exit.

    ``fast_ready`` shrinks ``guild_ready_timeout`` (discord.py waits 2 s after the last
    GUILD_CREATE before firing ``on_ready``). Errors from the client task are re-raised.
    """
    with patch_discord_urls(server):
        if fast_ready:
            client._connection.guild_ready_timeout = 0.05
        task = asyncio.create_task(client.start(token), name="fake-discord-client")
        try:
            await _until_ready(server, client, task, ready_timeout)
            yield client
        finally:
            if not client.is_closed():
                await client.close()
            try:
                await asyncio.wait_for(task, 10.0)
            except asyncio.CancelledError:
                pass


async def _until_ready(
    server: FakeDiscordServer, client: discord.Client, task: asyncio.Task[None], limit: float
) -> None:
    async def ready() -> None:
        await server.wait_for_identify(limit)
        await client.wait_until_ready()

    waiter = asyncio.create_task(ready())
    done, _ = await asyncio.wait({task, waiter}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        waiter.result()
        return
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    if task in done:
        task.result()  # raises the client's error
        raise RuntimeError("discord client stopped before it became ready")
    raise TimeoutError("discord client did not become ready against the fake server")

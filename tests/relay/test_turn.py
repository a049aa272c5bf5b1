"""Relayed calls through a real coturn, and what crosses to the other side when.

Every part is real: coturn's ``turnserver`` on loopback (tests/relay/coturn.py), the
lab's server minting credentials from the secret it shares with coturn, the device
agent with its call in a real session process, the console's PeerCall. What each
side receives is read at the server (every frame the hub sends, as sent): all
signaling crosses there, so a frame the tap does not show never reached anyone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from peer.call import CallState, PeerCall
from peer.call_media import MediaOptions
from peer.relay import rtc_ice_servers
from peer.signaling import RequestError
from protocol.enums import Mode, SdpType, SessionState
from protocol.messages import IceServer, SignalSdp
from signaling_server import cli, turn
from signaling_server.appkeys import HUB
from signaling_server.hub import Connection, Hub
from tech_console.admin_api import AdminApi
from tech_console.console_model import SessionModel
from tests.conftest import Lab, open_lab
from tests.integration.harness import Pair, make_pair, until
from tests.relay.coturn import Coturn
from tests.signaling_server.wire import login

SMALL = ["--fake-media", "--video-size", "320x240"]
IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


@pytest.fixture
async def coturn(tmp_path: Path) -> AsyncIterator[Coturn]:
    server = await Coturn(tmp_path / "coturn").start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def relay_lab(tmp_path: Path, coturn: Coturn) -> AsyncIterator[Lab]:
    async with open_lab(
        tmp_path, turn_urls=(coturn.url,), turn_secret=coturn.secret, turn_ttl_s=600
    ) as lab:
        yield lab


class Tap:
    """Every frame the hub sends, with the kind of client it went to, in order."""

    def __init__(self, hub: Hub) -> None:
        self.frames: list[tuple[str, dict[str, Any]]] = []
        original = hub._send_encoded

        async def tapped(conn: Connection, frame: str) -> None:
            if not conn.closed:
                self.frames.append((conn.party.value, json.loads(frame)))
            await original(conn, frame)

        hub._send_encoded = tapped  # type: ignore[method-assign]

    def to(self, party: str, *types: str) -> list[dict[str, Any]]:
        return [f for p, f in self.frames if p == party and (not types or f["type"] in types)]

    def connecting_update(self, party: str) -> dict[str, Any]:
        (update,) = [f for f in self.to(party, "session.update") if f["state"] == "connecting"]
        return update


def tap(lab: Lab) -> Tap:
    assert lab.server.app is not None
    return Tap(lab.server.app[HUB])


def candidate_lines(frames: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for frame in frames:
        if frame["type"] == "signal.sdp":
            lines += [x for x in frame["sdp"].splitlines() if x.startswith("a=candidate:")]
        elif frame["type"] == "signal.candidate":
            lines.append(frame["candidate"])
    return lines


@pytest.fixture
async def pair(relay_lab: Lab, tmp_path: Path) -> AsyncIterator[Pair]:
    async with make_pair(relay_lab, tmp_path, session_args=SMALL) as made:
        made.console.media_options = MediaOptions(width=320, height=240)
        yield made


# -- credentials --------------------------------------------------------------------------


def test_credentials_follow_coturns_scheme_are_per_call_end_and_expire() -> None:
    settings = turn.TurnSettings(("turn:127.0.0.1:3478?transport=udp",), "s3cret", ttl_s=600)
    now = 1_700_000_000.0
    device = turn.mint(settings, "ses-1.device", now_s=now)
    console = turn.mint(settings, "ses-1.technician", now_s=now)
    assert device.username == "1700000600:ses-1.device"
    expected = hmac.new(b"s3cret", device.username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(device.credential) == expected
    assert console.username != device.username
    assert console.credential != device.credential
    assert turn.expiry_of(console.username) == int(now) + 600
    # Minted per request: a later one names a later expiry (and another password).
    later = turn.mint(settings, "ses-1.device", now_s=now + 5)
    assert turn.expiry_of(later.username) == int(now) + 605
    assert later.credential != device.credential


@pytest.mark.parametrize(
    ("urls", "secret", "ttl_s", "error"),
    [
        ((), "s", 600, "at least one"),
        (("http://x",), "s", 600, "not a STUN/TURN url"),
        (("turn:x",), "", 600, "secret is empty"),
        (("turn:x",), "s", 10, "at least 60 s"),
    ],
)
def test_bad_turn_settings_are_refused(
    urls: tuple[str, ...], secret: str, ttl_s: int, error: str
) -> None:
    with pytest.raises(turn.TurnConfigError, match=error):
        turn.TurnSettings(urls, secret, ttl_s)


def test_server_cli_refuses_a_turn_url_without_a_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.server_main(["--data", str(tmp_path), "--turn-url", "turn:127.0.0.1:3478"])
    assert "TURN: the TURN shared secret is empty" in capsys.readouterr().err
    empty = tmp_path / "secret"
    empty.write_text("\n")
    with pytest.raises(SystemExit):
        cli.server_main(["--turn-url", "turn:h:3478", "--turn-secret-file", str(empty)])
    assert "holds no secret" in capsys.readouterr().err


async def allocate(coturn: Coturn, server: IceServer) -> tuple[str, int]:
    transport, _protocol = await create_turn_endpoint(
        asyncio.DatagramProtocol,
        server_addr=("127.0.0.1", coturn.port),
        username=server.username,
        password=server.credential,
    )
    try:
        relayed: tuple[str, int] = transport.get_extra_info("sockname")
        return relayed
    finally:
        transport.close()


async def test_coturn_accepts_a_minted_credential_and_refuses_expired_or_forged(
    coturn: Coturn,
) -> None:
    settings = coturn.settings()
    fresh = turn.mint(settings, "ses-1.device")
    host, _port = await allocate(coturn, fresh)
    assert host == "127.0.0.1"

    expired = turn.mint(settings, "ses-1.device", now_s=time.time() - settings.ttl_s - 5)
    forged = turn.mint(turn.TurnSettings(settings.urls, "not-the-secret"), "ses-1.device")
    for refused in (expired, forged):
        with pytest.raises(stun.TransactionFailed, match="401"):
            await allocate(coturn, refused)


# -- calls --------------------------------------------------------------------------------


async def test_relay_only_call_goes_through_coturn_with_chat_media_and_relayed_stats(
    relay_lab: Lab, pair: Pair
) -> None:
    await relay_lab.store.set_group_policy(relay_lab.tablets.id, relay_only=True)
    frames = tap(relay_lab)
    pair.decision[0] = Mode.VIDEO
    session = await pair.console.start_session(pair.device_id, Mode.VIDEO, "ticket TURN-1")
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=30)
    await until(lambda: session.consent_verified, 15)

    # Each end got its own credential, minted for this session, expiring in the TTL.
    sent_at = time.time()
    for party in ("device", "technician"):
        update = frames.connecting_update(party)
        assert update["relay_only"] is True
        (server,) = update["ice_servers"]
        assert server["urls"] == [relay_lab.config.turn_urls[0]]
        assert server["username"].endswith(f":{session.session_id}.{party}")
        assert sent_at - 60 < turn.expiry_of(server["username"]) <= sent_at + 600
    assert (
        frames.connecting_update("device")["ice_servers"][0]["credential"]
        != frames.connecting_update("technician")["ice_servers"][0]["credential"]
    )

    # Chat both ways over the relay.
    call = session.call
    assert call is not None
    await call.send_chat("Hello through the relay")
    await pair.until_device(lambda r: r["counts"]["chat_received"] == 1, 15)
    # Video frames decoded on both ends.
    media = session.media
    assert media is not None
    await until(lambda: media.video_in is not None and media.video_in.frames > 10, 20)
    report = await pair.until_device(
        lambda r: ((r["stats"] or {}).get("video_received") or {}).get("packets", 0) > 10, 20
    )
    assert report["stats"]["route"] == "relayed"
    assert report["stats"]["local_candidate_type"] == "relay"

    stats = await call.stats()
    assert (stats["route"], stats["local_candidate_type"], stats["remote_candidate_type"]) == (
        "relayed",
        "relay",
        "relay",
    )
    # What the console's session window lists under the video.
    model = SessionModel(pair.console, session)
    try:
        quality = await model.refresh_quality()
        assert quality is not None
        assert "Route: Relayed (TURN)" in quality.lines()
    finally:
        model.close()

    # Relay-only: no host or server-reflexive candidate, no related address, crossed.
    signals = frames.to("device", "signal.sdp", "signal.candidate") + frames.to(
        "technician", "signal.sdp", "signal.candidate"
    )
    lines = candidate_lines(signals)
    assert len(lines) >= 2
    for line in lines:
        assert " typ relay " in line, line
        assert "raddr 0.0.0.0 rport 9" in line, line
    await pair.console.close_session(session.session_id)
    await pair.console.wait_session(session, [SessionState.CLOSED])


async def test_without_relay_only_the_call_is_direct_although_turn_is_offered(
    relay_lab: Lab, pair: Pair
) -> None:
    frames = tap(relay_lab)
    pair.decision[0] = Mode.TEXT
    session = await pair.console.start_session(pair.device_id, Mode.TEXT, "ticket TURN-2")
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=30)
    assert frames.connecting_update("device")["relay_only"] is False
    assert frames.connecting_update("device")["ice_servers"]
    call = session.call
    assert call is not None
    assert (await call.stats())["route"] == "direct"
    await pair.console.close_session(session.session_id)


async def test_a_credential_coturn_refuses_fails_the_relay_only_call_clearly(
    tmp_path: Path, coturn: Coturn
) -> None:
    # The server was given another secret than coturn's: every credential it mints
    # is refused, as an expired one would be.
    async with (
        open_lab(
            tmp_path, turn_urls=(coturn.url,), turn_secret="not-coturns-secret", turn_ttl_s=600
        ) as lab,
        make_pair(lab, tmp_path, session_args=SMALL) as pair,
    ):
        await lab.store.set_group_policy(lab.tablets.id, relay_only=True)
        frames = tap(lab)
        session = await pair.console.start_session(pair.device_id, Mode.TEXT, "ticket TURN-3")
        await until(lambda: session.call is not None and session.call.state is CallState.FAILED)
        assert session.call is not None
        assert session.call.failure is not None
        assert "TURN server gave no relay candidate" in session.call.failure
        # The session window says so instead of "Connecting…".
        model = SessionModel(pair.console, session)
        try:
            assert "cannot connect: the TURN server gave no relay candidate" in (model.state_text())
        finally:
            model.close()
        # Nothing was offered: an SDP without a candidate would only time out later.
        assert frames.to("device", "signal.sdp", "signal.candidate") == []
        await pair.console.close_session(session.session_id)


async def test_an_expired_credential_fails_its_end_of_a_relay_only_call_clearly(
    coturn: Coturn,
) -> None:
    settings = coturn.settings()
    expired = turn.mint(settings, "ses-x.device", now_s=time.time() - settings.ttl_s - 5)
    calls: dict[str, PeerCall] = {}
    tasks: list[asyncio.Task[None]] = []

    def to(name: str) -> Any:
        async def send(message: Any) -> None:
            tasks.append(asyncio.ensure_future(calls[name].handle_signal(message)))

        return send

    calls["device"] = PeerCall(
        session_id="ses-x",
        is_offerer=False,
        author="Device",
        send_signal=to("console"),
        ice_servers=rtc_ice_servers([expired]),
        relay_only=True,
    )
    calls["console"] = PeerCall(
        session_id="ses-x",
        is_offerer=True,
        author="Tech",
        send_signal=to("device"),
        ice_servers=rtc_ice_servers([turn.mint(settings, "ses-x.technician")]),
        relay_only=True,
    )
    try:
        await calls["console"].start()
        await until(lambda: bool(tasks) and tasks[0].done(), 15)
        with pytest.raises(Exception, match="TURN server gave no relay candidate"):
            tasks[0].result()
        assert calls["device"].state is CallState.FAILED
        assert calls["device"].failure is not None
    finally:
        for call in calls.values():
            await call.close()


async def test_relay_only_group_without_turn_server_is_refused_before_the_prompt(
    lab: Lab, tmp_path: Path
) -> None:
    async with make_pair(lab, tmp_path, session_args=SMALL) as pair:
        await lab.store.set_group_policy(lab.tablets.id, relay_only=True)
        with pytest.raises(RequestError) as refused:
            await pair.console.start_session(pair.device_id, Mode.TEXT, "ticket TURN-4")
        assert refused.value.code == "unavailable"
        assert "relayed calls only" in refused.value.message
        assert pair.answers.empty(), "the device user was never asked"


async def test_admin_sets_relay_only_over_rest(lab: Lab) -> None:
    admin = AdminApi(lab.url, lab.fingerprint, await login(lab, "admin"))
    created = await admin.create_group("Kiosks", relay_only=True)
    assert created.relay_only is True
    changed = await admin.set_group_policy(lab.tablets.id, relay_only=True)
    assert changed.relay_only is True
    assert (await lab.store.group(lab.tablets.id)).relay_only is True
    assert not (await admin.set_group_policy(lab.tablets.id, relay_only=False)).relay_only


# -- what crosses before consent --------------------------------------------------------


async def test_no_address_crosses_before_the_device_user_accepts(lab: Lab, tmp_path: Path) -> None:
    hold = asyncio.Event()
    async with make_pair(lab, tmp_path, session_args=SMALL, hold=hold) as pair:
        frames = tap(lab)
        pair.decision[0] = Mode.TEXT
        session = await pair.console.start_session(pair.device_id, Mode.TEXT, "ticket PRIV-1")
        await asyncio.wait_for(pair.answers.get(), 10)  # the prompt is on the screen

        # A console that tries to send its SDP early (a modified client) is refused,
        # and nothing of it reaches the device.
        with pytest.raises(RequestError) as refused:
            await pair.console.link.request(
                SignalSdp(
                    session_id=session.session_id,
                    sdp_type=SdpType.OFFER,
                    sdp="v=0\nc=IN IP4 192.168.1.20\na=candidate:1 1 udp 1 192.168.1.20 9 typ host",
                )
            )
        assert refused.value.code == "bad_state"
        assert session.call is None, "the console makes no peer connection before consent"
        assert pair.agent.session is None, "nor does the device"
        before = list(frames.frames)
        assert before, "the invite went out"
        for party, frame in before:
            assert frame["type"] not in ("signal.sdp", "signal.candidate"), (party, frame)
            # Frames to the device: the invite; to the console: its session's state
            # and inventory. No address of either end's network is in any of them.
            assert not IPV4.search(json.dumps(frame)), (party, frame)
        assert {f["type"] for _p, f in before} >= {"session.invite", "session.update"}

        hold.set()  # the user accepts: only now does the call start
        await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=30)
        first_signal = next(
            i for i, (_p, f) in enumerate(frames.frames) if f["type"] == "signal.sdp"
        )
        accepted = next(
            i
            for i, (_p, f) in enumerate(frames.frames)
            if f["type"] == "session.update" and f["state"] == "connecting"
        )
        assert accepted < first_signal
        await pair.console.close_session(session.session_id)


def test_admin_cli_sets_relay_only_on_a_database_made_before_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A deployment's database from before relay-only existed: the column is added.
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "livesupport.db") as db:
        db.execute(
            "CREATE TABLE device_groups (id VARCHAR(64) PRIMARY KEY, name VARCHAR(128) UNIQUE,"
            " allowed_modes VARCHAR(32), service_enabled BOOLEAN)"
        )
        db.execute("INSERT INTO device_groups VALUES ('grp-old', 'Tablets', 'text', 1)")
    assert cli.admin_main(["--data", str(data), "--json", "groups"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["relay_only"] is False
    assert (
        cli.admin_main(["--data", str(data), "--json", "group-policy", "Tablets", "--relay-only"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["relay_only"] is True
    assert (
        cli.admin_main(["--data", str(data), "--json", "group-add", "Kiosks", "--relay-only"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["relay_only"] is True
    assert (
        cli.admin_main(
            ["--data", str(data), "--json", "group-policy", "Tablets", "--no-relay-only"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["relay_only"] is False


async def test_a_running_call_gets_fresh_credentials_before_they_expire(
    tmp_path: Path, coturn: Coturn
) -> None:
    # A connection that replaces a lost one may be made at any time in the call: the
    # members are handed new credentials every refresh period (TTL / 2 by default).
    async with (
        open_lab(
            tmp_path,
            turn_urls=(coturn.url,),
            turn_secret=coturn.secret,
            turn_ttl_s=600,
            turn_refresh_s=1.0,
        ) as lab,
        make_pair(lab, tmp_path, session_args=SMALL) as pair,
    ):
        frames = tap(lab)
        pair.decision[0] = Mode.TEXT
        session = await pair.console.start_session(pair.device_id, Mode.TEXT, "ticket TURN-5")
        await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=30)
        first = frames.connecting_update("technician")["ice_servers"][0]["username"]

        def refreshed(party: str) -> list[str]:
            return [
                f["ice_servers"][0]["username"]
                for f in frames.to(party, "session.update")
                if f["state"] == "in_call" and f["ice_servers"]
            ]

        await until(
            lambda: any(turn.expiry_of(u) > turn.expiry_of(first) for u in refreshed("technician")),
            10,
        )
        await until(lambda: len(refreshed("device")) >= 2, 10)
        newest = refreshed("technician")[-1]
        # The console keeps the newest for its next connection, the device's agent
        # hands it to the session process.
        await until(lambda: session.ice_servers[0].username == refreshed("technician")[-1])
        assert turn.expiry_of(session.ice_servers[0].username) >= turn.expiry_of(newest)
        agent_session = pair.agent.session
        assert agent_session is not None
        await until(
            lambda: (
                agent_session.ice is not None
                and agent_session.ice.ice_servers[0].username == refreshed("device")[-1]
            )
        )
        await pair.console.close_session(session.session_id)
        await pair.console.wait_session(session, [SessionState.CLOSED])
        # Its timers (the refresh with them) went with the session.
        assert lab.server.app is not None
        assert session.session_id not in lab.server.app[HUB].sessions

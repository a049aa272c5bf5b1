"""A media path lost mid-call, for real: the call runs over two loopback addresses
of its own (two "networks"), and the one in use is blackholed in the kernel's
routing table (bench/faults/_loopback_paths.py), as a network change does.

Within the device's grace period the console's new connection is answered without a
prompt; chat and frames flow again in the same session with the same chat log.
Past it, the device user is asked again; a no ends the call."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.faults._loopback_paths import CELLULAR, HOSTS, WIFI, LoopbackPaths
from device_agent.agent_model import IncomingCall
from peer import ice
from peer.call import PeerCall
from peer.call_media import MediaOptions
from peer.chat import ChatEntry
from protocol.enums import Mode, SessionState
from protocol.messages import SessionInvite
from tech_console.client import ConsoleSession
from tech_console.console_model import SessionModel
from tests.conftest import Lab
from tests.integration.harness import Pair, make_pair, until

SMALL = ["--fake-media", "--video-size", "320x240"]
REPLIES = ["reply before", "reply after"]
#: Generous: detection takes seconds, and 6 agents share 2 cores.
RECOVERY_S = 60.0

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="cutting a path needs root (CI and this machine run as root)"
)


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackPaths]:
    # Both ends (the console here, the session process it inherits the environment
    # of) offer only our two addresses.
    monkeypatch.setenv(ice.ENV, ",".join(HOSTS))
    with LoopbackPaths() as made:
        yield made
    ice.restrict_host_addresses(None)


@pytest.fixture
async def pair(lab: Lab, tmp_path: Path, paths: LoopbackPaths) -> AsyncIterator[Pair]:
    args = [*SMALL, *(arg for reply in REPLIES for arg in ("--reply", reply))]
    async with make_pair(lab, tmp_path, session_args=args) as made:
        made.console.media_options = MediaOptions(width=320, height=240)
        yield made


def live_call(session: ConsoleSession) -> PeerCall:
    call = session.call
    assert call is not None
    return call


def texts(entries: list[ChatEntry]) -> list[str]:
    return [entry.text for entry in entries]


async def start_call(pair: Pair, mode: Mode) -> ConsoleSession:
    pair.decision[0] = mode
    session = await pair.console.start_session(pair.device_id, mode, "ticket NET-1")
    await asyncio.wait_for(pair.answers.get(), 5)
    await pair.console.wait_session(session, [SessionState.IN_CALL], timeout_s=20)
    await until(lambda: session.consent_verified)
    return session


async def chat_round(session: ConsoleSession, text: str, reply: str) -> None:
    """Send ``text`` and wait for the scripted device user's ``reply``."""
    await live_call(session).send_chat(text)
    await until(lambda: reply in texts(live_call(session).chat.entries()), RECOVERY_S)


async def test_path_lost_within_grace_recovers_without_a_prompt(
    lab: Lab, pair: Pair, paths: LoopbackPaths
) -> None:
    session = await start_call(pair, Mode.VIDEO)
    # The console's session window, without a display: it must follow the new
    # connection with the same chat and a call timer that goes on.
    view = SessionModel(pair.console, session)
    await chat_round(session, "hello before", "reply before")
    first = live_call(session)
    media = first.media
    assert media is not None
    await until(lambda: media.video_in is not None and media.video_in.frames > 5)
    hosts = first.selected_hosts()
    assert hosts is not None
    assert set(hosts) <= set(HOSTS)
    first_receipt = session.consent
    assert first_receipt is not None

    # The device's network goes away (the console's too if it was the same one).
    await until(lambda: view.elapsed_s() is not None)
    elapsed_before = view.elapsed_s()
    assert elapsed_before is not None
    lost = hosts[1]
    paths.cut(lost)

    await until(lambda: session.recoveries >= 1, RECOVERY_S)
    await until(lambda: session.call is not first and live_call(session).chat_open, RECOVERY_S)
    await until(lambda: session.consent_verified, RECOVERY_S)
    call = live_call(session)
    new_hosts = call.selected_hosts()
    assert new_hosts is not None
    assert lost not in new_hosts
    # The same session, the same chat log in the same window: old and new messages.
    assert session.session_id == first.session_id
    assert pair.agent.session is not None
    assert pair.agent.session.session_id == session.session_id
    assert call.chat is first.chat
    assert view.chat is call.chat
    elapsed_after = view.elapsed_s()
    assert elapsed_after is not None
    assert elapsed_after > elapsed_before, "the call's timer went on, not from zero"
    await chat_round(session, "hello after", "reply after")
    assert texts(call.chat.entries()) == [
        "hello before",
        "reply before",
        "hello after",
        "reply after",
    ]
    # Frames flow again on the new connection, from the same (still open) camera.
    assert call.media is media
    await until(lambda: media.video_in is not None and media.video_in.frames > 5, RECOVERY_S)
    report = await pair.until_device(
        lambda r: r["recoveries"] >= 1 and r["chat_open"], timeout_s=RECOVERY_S
    )
    assert report["calls"] == 1, "a recovery is not a new call"
    assert report["counts"]["chat_received"] == 2
    await pair.until_device(
        lambda r: ((r["stats"] or {}).get("video_received") or {}).get("packets", 0) > 10,
        timeout_s=RECOVERY_S,
    )
    # No new consent prompt: the device signed a receipt for the new keys by itself,
    # still for the user's one acceptance.
    assert pair.answers.empty()
    receipt = session.consent
    assert receipt is not None
    assert receipt is not first_receipt
    assert receipt.offer_fingerprint == call.local_fingerprint
    assert receipt.answer_fingerprint == call.remote_fingerprint
    assert receipt.accepted_at_ms == first_receipt.accepted_at_ms
    assert session.state is SessionState.IN_CALL
    # The server let the new connection through and recorded it.
    renegotiated = [r for r in await lab.store.audit_rows() if r.action == "call.renegotiate"]
    assert renegotiated
    assert {r.target for r in renegotiated} == {pair.device_id}
    view.close()


@pytest.mark.parametrize("agrees", [True, False], ids=["accepted", "rejected"])
async def test_path_lost_past_grace_asks_the_user_again(
    pair: Pair, paths: LoopbackPaths, agrees: bool
) -> None:
    pair.agent.path_grace_s = 1.0
    session = await start_call(pair, Mode.TEXT)
    view = SessionModel(pair.console, session)
    await chat_round(session, "hello before", "reply before")
    first_receipt = session.consent
    assert first_receipt is not None

    prompts: asyncio.Queue[SessionInvite] = asyncio.Queue()
    answer: asyncio.Future[Mode | None] = asyncio.get_running_loop().create_future()

    async def ask(invite: SessionInvite) -> Mode | None:
        await prompts.put(invite)
        return await answer

    pair.agent.invite_handler = ask
    # Every network gone, on both ends: nothing can connect, and the console has
    # nothing to offer, for longer than the device's grace period.
    paths.cut(WIFI)
    paths.cut(CELLULAR)
    await until(
        lambda: pair.agent.session is not None and pair.agent.path_grace_over(pair.agent.session),
        RECOVERY_S,
    )
    assert prompts.empty()
    # What the technician's window says meanwhile: no false alarm about consent.
    assert view.state_text() == f"Connection to {view.device_name} lost. Reconnecting…"
    assert view.consent_text() == ("Waiting for the consent receipt of the new connection.", False)
    paths.restore(CELLULAR)  # a network is back: the console's next offer can work
    prompt = await asyncio.wait_for(prompts.get(), RECOVERY_S)
    assert prompt.session_id == session.session_id
    # The device's prompt for it counts down afresh and offers the call's mode only.
    incoming = IncomingCall(prompt, pair.agent.chat_services)
    assert incoming.remaining_s() > 0
    assert [choice.mode for choice in incoming.choices] == [Mode.TEXT]
    device_session = pair.agent.session
    assert device_session is not None
    # The prompt holds the console's offer: the device answers nothing meanwhile.
    assert device_session.held_offer is not None
    assert not session.consent_verified
    if agrees:
        answer.set_result(Mode.TEXT)
        await until(lambda: session.consent_verified and live_call(session).chat_open, RECOVERY_S)
        call = live_call(session)
        receipt = session.consent
        assert receipt is not None
        assert receipt.answer_fingerprint == call.remote_fingerprint
        assert receipt.accepted_at_ms > first_receipt.accepted_at_ms, "a new acceptance"
        await chat_round(session, "hello after", "reply after")
        assert texts(call.chat.entries())[:2] == ["hello before", "reply before"]
        assert session.state is SessionState.IN_CALL
        assert view.state_text() == f"In call with {view.device_name}."
    else:
        answer.set_result(None)
        await pair.console.wait_session(session, [SessionState.CALL_ENDED], timeout_s=30)
        await until(lambda: session.call is None)
        report = await pair.until_device(lambda r: r["call_state"] is None)
        assert report["chat_open"] is False
        assert pair.agent.session is not None  # the call ended, not the session
        assert prompts.empty()
    view.close()

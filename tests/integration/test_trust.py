"""Trust end to end (issue 6): a server that comes back with another certificate is
refused by the device agent and the console, with no retry and nothing sent to it;
a console's first contact reads the certificate for a person to confirm; a consent
receipt bound to a rewritten ``a=fingerprint`` fails the call on the console; a
revocation by the admin CLI, from its own process, ends the device for good.

Real parts: the lab's server on loopback, a device agent with its session process,
the console client, aiortc on both ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiortc import RTCCertificate

from device_agent.agent_model import AgentModel
from peer.signaling import LinkState, RequestError
from protocol.enums import Mode, SdpType, SessionState
from protocol.messages import SignalSdp
from signaling_server.app import HUB, STORE
from signaling_server.server import RunningServer
from tech_console.client import ConsoleClient
from tech_console.console_model import SessionModel
from tech_console.first_contact import first_contact, presented_fingerprint
from tests.conftest import PASSWORD, Lab
from tests.integration.harness import FAST, Pair, make_pair, until


@pytest.fixture
async def pair(lab: Lab, tmp_path: Path) -> AsyncIterator[Pair]:
    async with make_pair(lab, tmp_path) as made:
        yield made


async def restart_with_a_new_certificate(lab: Lab) -> RunningServer:
    """The same server (address, database) back with a certificate made anew: what
    a reinstalled server, or an impostor on its address, looks like to a client."""
    port, old = lab.server.port, lab.server.fingerprint
    await lab.server.stop()
    for name in ("server-cert.pem", "server-key.pem"):
        (lab.config.data_dir / name).unlink()
    server = await RunningServer(dataclasses.replace(lab.config, port=port)).start()
    assert (server.url, server.fingerprint != old) == (lab.url, True)
    return server


async def test_a_changed_server_key_is_refused_for_good_by_agent_and_console(
    pair: Pair, lab: Lab
) -> None:
    agent, console = pair.agent, pair.console
    model = AgentModel(agent)
    console_links: list[LinkState] = []
    console.link_listeners.add(console_links.append)
    made_before = (agent.client.connections_made, console.link.connections_made)
    server = await restart_with_a_new_certificate(lab)
    try:
        await asyncio.wait_for(agent.client.stopped.wait(), 20)
        await asyncio.wait_for(console.link.stopped.wait(), 20)
        for link in (agent.client, console.link):
            assert link.fatal is not None
            assert link.fatal.code == "pin_mismatch"
            assert link.state is LinkState.STOPPED
        assert console_links[-1] is LinkState.STOPPED
        # Stopped means no retry at all: the loop that reconnects has ended, and no
        # websocket ever opened on the impostor.
        assert (agent.client.connections_made, console.link.connections_made) == made_before
        assert server.app is not None
        assert server.app[HUB].stats()["connections"] == 0
        # The device user is told why, not "reconnecting".
        view = model.status_view()
        assert not view.online
        assert view.online_label.startswith("Refused: the server's certificate")
        assert "Offline, reconnecting" not in view.summary

        # A fresh console login with the remembered pin: refused before any request,
        # so the password never reached the impostor.
        fresh = ConsoleClient(lab.url, lab.fingerprint, backoff=FAST)
        with pytest.raises(RequestError) as refused:
            await fresh.login("tech", PASSWORD)
        await fresh.close()
        assert refused.value.code == "pin_mismatch"
        logins = [r for r in await server.app[STORE].audit_rows() if r.action == "login"]
        assert [r.actor for r in logins] == [lab.tech.id]  # the pair's, before the restart
    finally:
        model.close()
        await server.stop()


async def test_first_contact_reads_the_certificate_for_a_person_to_confirm(lab: Lab) -> None:
    assert await presented_fingerprint(lab.url) == lab.fingerprint
    contact = await first_contact(lab.url)
    assert (contact.fingerprint, contact.changed) == (lab.fingerprint, False)
    assert lab.fingerprint in contact.question()
    assert lab.server.app is not None
    # Reading the certificate is only a handshake: no request reached the server.
    assert not [r for r in await lab.store.audit_rows() if r.action == "login"]

    server = await restart_with_a_new_certificate(lab)
    try:
        changed = await first_contact(lab.url, saved_pin=lab.fingerprint)
        assert (changed.fingerprint, changed.changed) == (server.fingerprint, True)
        assert changed.question().startswith("WARNING")
        # Confirmed, the new fingerprint is the pin and the login runs pinned to it.
        console = ConsoleClient(lab.url, changed.fingerprint, backoff=FAST)
        try:
            auth = await console.login("tech", PASSWORD)
            assert auth.principal_id == lab.tech.id
        finally:
            await console.close()
    finally:
        await server.stop()

    with pytest.raises(RequestError) as unreachable:
        await presented_fingerprint(lab.url, timeout_s=5)
    assert unreachable.value.code == "unavailable"
    with pytest.raises(RequestError) as bad:
        await presented_fingerprint("http://127.0.0.1:1")
    assert bad.value.code == "invalid_field"


def impostor_fingerprints(sdp: str) -> str:
    """Every ``a=fingerprint`` line replaced by one of another certificate, as a
    man in the middle who terminates DTLS himself would write it."""
    theirs = {f.algorithm: f.value for f in RTCCertificate.generateCertificate().getFingerprints()}

    def swap(match: re.Match[str]) -> str:
        return f"a=fingerprint:{match[1]} {theirs[match[1]]}"

    rewritten, count = re.subn(r"a=fingerprint:(\S+) [0-9A-Fa-f:]+", swap, sdp)
    assert count >= 1
    return rewritten


async def test_a_rewritten_offer_fingerprint_fails_the_call_visibly_on_the_console(
    pair: Pair, lab: Lab
) -> None:
    console = pair.console
    link = console.link
    genuine_send = link.send
    rewritten: list[str] = []

    async def send_through_an_impostor(message: object) -> None:
        # The offer leaves the console with someone else's DTLS fingerprint, as if an
        # impostor on the path (or the server itself) had rewritten it: the device
        # and the server both see only the rewritten one.
        if isinstance(message, SignalSdp) and message.sdp_type is SdpType.OFFER:
            message = dataclasses.replace(message, sdp=impostor_fingerprints(message.sdp))
            rewritten.append(message.sdp)
        await genuine_send(message)  # type: ignore[arg-type]

    link.send = send_through_an_impostor  # type: ignore[method-assign]
    session = await console.start_session(pair.device_id, Mode.TEXT, "ticket SEC-1")
    model = SessionModel(console, session)
    try:
        # The device consents to the call it saw; the console checks that receipt
        # against its own certificate, finds another one and ends the call.
        await until(lambda: session.consent is not None, timeout_s=20)
        await until(lambda: session.consent_error is not None and session.call is None)
        assert rewritten
        assert session.consent is not None
        assert not session.consent_verified
        assert "fingerprint_mismatch" in (session.consent_error or "")
        text, warning = model.consent_text()
        assert warning
        assert text.startswith("Consent NOT verified")
        assert "Call ended" in text
        # The server recorded the rewritten offer: only the console could tell.
        assert session.consent.offer_fingerprint in rewritten[0]
        # DTLS never came up either: the device expected the impostor's certificate.
        assert session.state is not SessionState.IN_CALL
        report = await pair.device_report()
        assert report["chat_open"] is False, report
    finally:
        model.close()


async def test_revocation_by_the_admin_cli_ends_the_agent_for_good(pair: Pair, lab: Lab) -> None:
    agent = pair.agent
    model = AgentModel(agent)
    made = agent.client.connections_made
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer.cli",
        "admin",
        "--data",
        str(lab.config.data_dir),
        "--json",
        "revoke",
        pair.device_id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert pair.device_id in out.decode()
    # The server's sweep notices within seconds and closes the socket with REVOKED;
    # the agent treats that as final and never reconnects.
    await asyncio.wait_for(agent.client.stopped.wait(), 20)
    try:
        assert agent.client.fatal is not None
        # "closed" with this reason is how the link reports close code REVOKED.
        assert (agent.client.fatal.code, agent.client.fatal.message) == (
            "closed",
            "this device was revoked",
        )
        assert agent.client.connections_made == made
        assert not model.status_view().online
        assert "revoked" in model.status_view().online_label
        assert lab.server.app is not None
        assert pair.device_id not in lab.server.app[HUB].devices_online
    finally:
        model.close()

"""The resident agent with its windows: model, views and (for demos) an autopilot."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from device_agent.agent import DeviceAgent
from device_agent.agent_model import AgentModel, InboxItem, IncomingCall
from device_agent.ui.agent_window import AgentUi
from peer.signaling import RequestError
from protocol.enums import Mode

log = logging.getLogger(__name__)

#: How long the autopilot "reads" a notification before answering it.
AUTOPILOT_READ_S = 1.0


class AgentFace:
    """The agent's windows over its model; with ``--autopilot``, a demo user who
    presses the prompt's buttons and answers notifications through the model."""

    def __init__(self, agent: DeviceAgent, args: argparse.Namespace) -> None:
        self.model = AgentModel(agent)
        self.ui = AgentUi(self.model, screenshots=args.screenshots)
        self.autopilot = bool(args.autopilot)
        self.accept: str = args.accept
        self.accept_delay_s: float = args.accept_delay_s
        self.answer: str | None = args.notification_answer
        self.counts = {"invites": 0, "accepted": 0, "notifications": 0}
        self._tasks: set[asyncio.Task[None]] = set()
        self.model.incoming_changed.add(self._on_incoming)
        self.model.popups.add(self._on_popup)

    def _on_incoming(self, call: IncomingCall | None) -> None:
        if call is None:
            return
        self.counts["invites"] += 1
        if self.autopilot:
            self._spawn(self._answer_call(call))

    async def _answer_call(self, call: IncomingCall) -> None:
        # A person reads the prompt first (and the demo takes its picture).
        await asyncio.sleep(max(self.accept_delay_s, 0.6))
        if self.accept == "reject":
            call.reject()
            return
        wanted = Mode(self.accept)
        modes = [c.mode for c in call.choices]
        mode = wanted if wanted in modes else modes[-1]
        call.accept(mode)
        self.counts["accepted"] += 1

    def _on_popup(self, item: InboxItem) -> None:
        self.counts["notifications"] += 1
        if self.autopilot:
            self._spawn(self._answer_note(item))

    async def _answer_note(self, item: InboxItem) -> None:
        await asyncio.sleep(AUTOPILOT_READ_S)
        if self.answer:
            await self.model.reply(item.notification_id, self.answer)
        else:
            await self.model.mark_read(item.notification_id)
        for popup in self.ui.popups:
            if popup.card.item.notification_id == item.notification_id:
                popup.close()

    def _spawn(self, coro: Any) -> None:
        async def run() -> None:
            try:
                await coro
            except (RequestError, ValueError) as exc:
                log.warning("autopilot: %s", exc)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.ui.close()
        self.model.close()

"""The real agent (Qwen2.5-Coder 0.5B and the tiny projector) against the scripted fake balancer:
it reports the projector it has loaded only to a balancer that offers our status extensions, and
drops it when a desired state without one is applied."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.agent.scripted_fake_balancer import Frame, ScriptedFakeBalancer, snapshot_of
from tests.agent.test_agent import desired_state, start_agent


def applied_with_slots(snapshot: Frame) -> bool:
    return snapshot["state_application_status"] == "Applied" and snapshot["slots_total"] == 1


async def test_reports_its_projector_only_to_a_balancer_that_offers_status_extensions(
    nursery: trio.Nursery, qwen_model_path: Path, mmproj_path: Path
) -> None:
    with_projector = {**desired_state(qwen_model_path), "multimodal_projection": {"LocalToAgent": str(mmproj_path)}}
    for offered in (False, True):
        fake = ScriptedFakeBalancer(offer_status_extensions=offered)
        await nursery.start(fake.serve)
        await start_agent(nursery, fake.address, slots=1)
        connection = await fake.first_connection()
        start = len(connection.frames)
        await connection.set_state(with_projector)
        status = await connection.wait_for_status(applied_with_slots, start=start)
        if not offered:
            assert not any(
                "multimodal_projection_path" in snapshot
                for frame in connection.frames
                if (snapshot := snapshot_of(frame)) is not None
            )
            continue
        assert status["multimodal_projection_path"] == str(mmproj_path)
        start = len(connection.frames)
        await connection.set_state(desired_state(qwen_model_path))
        status = await connection.wait_for_status(
            lambda snapshot: applied_with_slots(snapshot) and "multimodal_projection_path" not in snapshot, start=start
        )
        assert status["model_path"] == str(qwen_model_path)

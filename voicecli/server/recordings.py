"""Call recordings on the server: opened and closed for the call's owner, repaired at start-up,
and which instance's disk holds each (README, "Recordings").

A recording lives on the disk of the instance that carried the call (`recordings_dir` is
file-only); the record names that instance, so another one can say where it is.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from voicecli.call.recording import CallRecorder, repair

if TYPE_CHECKING:
    from voicecli.server.state import ServerState
    from voicecli.store import CallRecord, CallStore

# The most a call's ending waits for its recording to close: a disk that hangs (a stuck
# network mount) must not keep the call's slot and record open.
CLOSE_LIMIT_S = 10.0
# What a recording cut short by a killed server says in its record once repaired.
REPAIRED = "recording cut short: its server stopped unexpectedly (header repaired at the next start)"


async def start_recording(state: ServerState, call_id: str) -> CallRecorder | None:
    """Open `{recordings_dir}/{call_id}.wav` and note it in the record; a disk that refuses
    leaves the call unrecorded, and its record says why."""
    path = (state.settings.recordings_dir / f"{call_id}.wav").absolute()
    log = logger.bind(call_id=call_id)
    try:
        recorder = await CallRecorder.open(path)
    except OSError as exc:
        error = f"recording not started: {exc.strerror or exc} ({path})"
        log.warning(error)
        await state.store.set_recording(call_id, error=error)
        return None
    log.info(f"recording to {path}")
    try:
        await state.store.set_recording(call_id, path=str(path))
    except BaseException:
        await asyncio.shield(recorder.close())
        raise
    return recorder


async def finish_recording(state: ServerState, call_id: str, recorder: CallRecorder) -> None:
    """Close the file and note its length (and any disk error) in the record; never raises:
    the call's ending goes on whatever becomes of its recording."""
    log = logger.bind(call_id=call_id)
    try:
        try:
            seconds, error = await asyncio.wait_for(recorder.close(), CLOSE_LIMIT_S)
        except TimeoutError:
            seconds = recorder.seconds
            error = f"recording not finished: the disk did not answer within {CLOSE_LIMIT_S:g} s"
        if error:
            log.warning(error)
        await state.store.set_recording(call_id, seconds=seconds, error=error)
    except Exception:
        log.exception("the recording could not be closed")


async def repair_recordings(store: CallStore) -> int:
    """Finish the files of recordings whose server was killed mid-call: header sizes from
    the file's length, the length in the record. Files not on this disk are left for the
    instance whose disk has them. How many were repaired."""
    repaired = 0
    for record in await store.unfinished_recordings():
        path = Path(record.recording_path or "")
        try:
            seconds = await asyncio.to_thread(repair, path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            logger.bind(call_id=record.id).warning(f"recording {path} not repaired: {exc}")
            await store.set_recording(record.id, seconds=0.0, error=f"recording unreadable: {exc}")
            continue
        await store.set_recording(record.id, seconds=seconds, error=REPAIRED)
        repaired += 1
    if repaired:
        logger.warning(f"{repaired} recording(s) of calls a killed server carried: header repaired")
    return repaired


def _instance_of(holder: str | None) -> str | None:
    # A worker's holder id is its instance's plus /wN: the same machine, the same disk.
    return holder.split("/", 1)[0] if holder else None


def recording_elsewhere(record: CallRecord, instance: str) -> str | None:
    """Why this instance cannot serve the record's recording from its disk, if it cannot."""
    carrier = _instance_of(record.instance)
    if carrier and carrier != instance:
        return f"the recording of call {record.id} is on the disk of instance {carrier}: ask that instance"
    return None

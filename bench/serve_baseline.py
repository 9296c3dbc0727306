"""The baseline: the same agent served the way pipecat's own telephony examples serve it.

One FastAPI + uvicorn process; `parse_telephony_websocket`, `TwilioFrameSerializer(auto_hang_up
=False)`, `FastAPIWebsocketTransport`; input -> OpenAI STT -> user aggregator (Silero VAD,
default turn strategies: VAD start, Smart Turn v3 stop, one model copy per call) -> OpenAI LLM
-> OpenAI TTS -> output -> assistant aggregator; `PipelineParams(audio_in_sample_rate=8000,
audio_out_sample_rate=8000)`, worker defaults otherwise, runner with `force_gc=True`, as the
twilio-chatbot example and ../shared/baseline.md. The only departures from the example: the
webhook answers on voicecli's path so one emulator drives both servers, the greeting is a
fixed TTSSpeakFrame (voicecli's agent speaks a fixed greeting too), and the log level is the
one voicecli uses (--log-level).

    python bench/serve_baseline.py --port 8300 --fake-url http://127.0.0.1:8100/v1 [--cpu 0]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import pin

GREETING = "Hello, thanks for calling. How can I help you today?"
SYSTEM_PROMPT = "You are a test agent on a phone call. Answer in one short sentence."


def make_app(fake_url: str, port: int, with_probe: bool):
    from fastapi import FastAPI, WebSocket
    from fastapi.responses import HTMLResponse, JSONResponse
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.frames.frames import TTSSpeakFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.runner.utils import parse_telephony_websocket
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.openai.stt import OpenAISTTService
    from pipecat.services.openai.tts import OpenAITTSService
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
    from pipecat.workers.runner import WorkerRunner

    app = FastAPI()
    twiml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Connect>'
        f'<Stream url="ws://127.0.0.1:{port}/ws"></Stream></Connect><Pause length="40"/></Response>'
    )

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @app.post("/telephony/twilio/inbound/{agent}")
    async def inbound(agent: str) -> HTMLResponse:
        return HTMLResponse(content=twiml, media_type="application/xml")

    async def run_bot(transport: FastAPIWebsocketTransport) -> None:
        stt = OpenAISTTService(api_key="not-needed", base_url=fake_url)
        llm = OpenAILLMService(api_key="not-needed", base_url=fake_url)
        tts = OpenAITTSService(api_key="not-needed", base_url=fake_url, sample_rate=24000)
        context = LLMContext([{"role": "system", "content": SYSTEM_PROMPT}])
        user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
            context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
        )
        pipeline = Pipeline(
            [transport.input(), stt, user_aggregator, llm, tts, transport.output(), assistant_aggregator]
        )
        task = PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000))

        @transport.event_handler("on_client_connected")
        async def on_client_connected(transport, client):
            await task.queue_frames([TTSSpeakFrame(GREETING)])

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(transport, client):
            await task.cancel()

        runner = WorkerRunner(handle_sigint=False, force_gc=True)
        await runner.add_workers(task)
        await runner.run()

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        _, call_data = await parse_telephony_websocket(websocket)
        serializer = TwilioFrameSerializer(
            stream_sid=call_data["stream_id"],
            call_sid=call_data["call_id"],
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer
            ),
        )
        await run_bot(transport)

    if with_probe:
        from bench import probe

        probe.install()

        @app.get("/bench/probe")
        async def read(since: float, until: float) -> JSONResponse:
            return JSONResponse(probe.snapshot(since, until))

        @app.post("/bench/probe/reset")
        async def reset() -> dict:
            probe.reset()
            return {"ok": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--fake-url", default="http://127.0.0.1:8100/v1")
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    if args.cpu is not None:
        pin(args.cpu)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    import uvicorn

    uvicorn.run(make_app(args.fake_url, args.port, args.probe), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

"""The committed RingCX code is what grpcio-tools makes of streaming.proto, and the wire names
are RINGCX.md's."""

from __future__ import annotations

from pathlib import Path

import pytest

from callstream.ringcx import generate, streaming_pb2, streaming_pb2_grpc

pytest.importorskip("grpc_tools")


def test_committed_code_is_not_stale(tmp_path: Path) -> None:
    here = Path(generate.__file__).resolve().parent
    for fresh in generate.generate(tmp_path):
        committed = here / fresh.name
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed.name} is stale: run python -m callstream.ringcx.generate")


def test_wire_names_and_numbers() -> None:
    service = streaming_pb2.DESCRIPTOR.services_by_name["Streaming"]
    assert service.full_name == "ringcentral.ringcx.streaming.v1beta2.Streaming"
    method = service.methods_by_name["Stream"]
    assert method.client_streaming and not method.server_streaming
    assert method.output_type.full_name == "google.protobuf.Empty"
    event = streaming_pb2.StreamEvent.DESCRIPTOR
    assert {f.name: f.number for f in event.fields} == {
        "session_id": 1, "dialog_init": 2, "segment_start": 3, "segment_media": 4, "segment_info": 5,
        "segment_stop": 6}
    content = streaming_pb2.AudioContent.DESCRIPTOR
    assert {f.name: f.number for f in content.fields} == {"payload": 1, "seq": 2, "duration": 3}
    assert streaming_pb2.ParticipantType.Value("BOT") == 5
    assert streaming_pb2.Codec.Value("L16") == 4
    assert hasattr(streaming_pb2_grpc, "add_StreamingServicer_to_server")

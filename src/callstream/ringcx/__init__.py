"""The RingCX gRPC front end: the `.proto` and its generated code, the wire messages turned into
the call core's events (`convert`), a dialog's side of the one recorder and its gRPC statuses
(`session`), and the bounded hand-over from the gRPC thread to trio (`bridge`). The listener is
`callstream.server.ringcx_service`; the recording is `callstream.server.recorder.CallRecorder`'s."""

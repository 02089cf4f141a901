/* Splitting WebSocket frames from a client (RFC 6455), the common case only.
 *
 * The websockets adapter reads a chunk of the TCP stream and needs every whole, final, masked
 * text or binary frame in it, unmasked.  Doing that per frame in Python cost more than parsing
 * the JSON inside; here one call splits a whole chunk.  Anything else (control frames, fragments,
 * unmasked or RSV frames, oversized frames, a frame cut by the chunk's end) stops the split, and
 * the adapter hands that frame to the websockets library.
 *
 * This header is also the cffi cdef (csrc/build_mulaw.py reads it verbatim): declarations only.
 * Include <stddef.h> and <stdint.h> before it.
 */

/* From the start of data[0:size]: each frame whose first byte is 0x81 or 0x82 (FIN, no RSV,
 * text or binary), masked, with a payload of at most max_payload bytes, entirely inside data.
 * Its payload is unmasked into out (capacity at least size), back to back with the others, and
 * described in spans[2 * i ...] (payload offset in out, payload length: the layout of a
 * TextBatch's spans) and frames[2 * i ...] (opcode: 1 text, 2 binary; frame offset in data).
 * Stops at the first other frame, at max_frames frames, or at the end.  Returns the number of
 * frames; report[0] is the offset in data just past the last of them, report[1] is 1 when
 * every one of them is a text frame whose payload is all ASCII (the Media stream: each payload
 * is valid UTF-8 as it is), else 0. */
size_t cs_ws_split(const uint8_t *data, size_t size, uint64_t max_payload, uint8_t *out,
                   uint32_t *spans, uint32_t *frames, size_t max_frames, size_t *report);

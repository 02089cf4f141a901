/* The Media message's common shape, recognised and decoded in C for a batch of messages.
 *
 * A real-time call is 100 Media messages a second; parsing each one's JSON and base64 through
 * Python cost more than all the rest of its way to disk.  One call here scans every message of
 * a read: a message in the plain shape below is decoded, any other is left for the general
 * parser in protocol.py, which alone decides what it means.  So this is only a shortcut: it
 * recognises a subset of what protocol.parse_message takes as Media, with the same result
 * (tests/test_mediascan.py checks that on random messages).
 *
 * The plain shape: one JSON object whose members are exactly "event", "perspective",
 * "sequenceId" and "media", each once, in any order, with JSON white space allowed around
 * tokens; "event" is "Media"; "perspective" is "Participant" (0) or "Conference" (1);
 * "sequenceId" is a string of 1 to 18 ASCII digits; "media" is padded standard base64 of 1 to
 * max_payload bytes; no member name or value has an escape.  The message is at most max_bytes
 * long.
 *
 * This header is also the cffi cdef (csrc/build_mulaw.py reads it verbatim): declarations only.
 * Include <stddef.h> and <stdint.h> before it.
 */

/* For message i (spans[2 * i] = its offset in buf, spans[2 * i + 1] = its length), i < count:
 * in the plain shape, its payload is decoded into out and media[3 * i ...] = perspective,
 * payload offset in out, payload length; seqs[i] = its sequence number.  Otherwise
 * media[3 * i] = 2 (not recognised) and out is not advanced.  out needs room for the sum of
 * the messages' lengths.  Returns the number of messages recognised; *written is the number of
 * bytes written to out.  vectors: nonzero to decode base64 with the CPU's vector instructions
 * where it has them (AVX2), 0 to decode it one group of four digits at a time (the same
 * result: tests compare the two). */
size_t cs_media_scan(const uint8_t *buf, const uint32_t *spans, size_t count, size_t max_bytes,
                     size_t max_payload, uint8_t *out, uint32_t *media, int64_t *seqs,
                     size_t *written, int vectors);

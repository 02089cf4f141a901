/* The segment mixer's writes (src/callstream/call/mixing.py): G.711 chunks decoded and added
 * into one channel of an interleaved int16 mix, saturating.
 *
 * This header is also the cffi cdef (csrc/build_mulaw.py reads it verbatim): declarations only.
 * Include <stddef.h> and <stdint.h> before it.
 */

enum {
    CS_MIX_FIELDS = 5,  /* int64s per op: offset, length, frame, channel, law */
    CS_MIX_ULAW = 0,
    CS_MIX_ALAW = 1
};

/* Applies ``count`` ops in order to ``mix`` (``frames`` rows of ``channels`` int16, interleaved;
 * owned by the caller, as are every other buffer). Op k is ops[CS_MIX_FIELDS * k ...]: the
 * chunk's bytes start at ``offset`` of ``payloads`` (``size`` bytes in all) and are ``length``
 * G.711 codes of law ``law``; decoded, sample i is added to mix[(frame + i) * channels + channel],
 * the sum taken in 32 bits and clipped to [-32768, 32767]: the same as numpy's decode,
 * astype(int32), add and clip, op after op. Returns the number of ops applied: ``count``, or the
 * index of the first op that does not fit (out of ``payloads`` or ``mix``, a channel or law out
 * of range, a negative field), which is not applied, nor is any after it. */
size_t cs_mix_g711(int16_t *mix, size_t frames, size_t channels, const uint8_t *payloads, size_t size,
                   const int64_t *ops, size_t count);

/* A block's cut after the ops: the first ``n`` frames of the mix with the ops applied (as
 * cs_mix_g711 applies them) into ``out`` (``n`` rows, the caller's), and the mix moved up by ``n``
 * frames, zero in its last ``n``. The mix must be zero from frame ``dirty`` on before the ops (the
 * caller knows how far it wrote): those frames are neither read nor written but where an op
 * lands, so that a cut touches the memory of its audio only. Returns ``count``, or the index of
 * the first op that does not fit (as cs_mix_g711), or ``count`` + 1 when ``n`` or ``dirty``
 * exceeds ``frames``: then nothing is written. */
size_t cs_mix_cut(int16_t *mix, size_t frames, size_t channels, const uint8_t *payloads, size_t size,
                  const int64_t *ops, size_t count, int16_t *out, size_t n, size_t dirty);

/* The segment mixer's writes (see mix.h for the contract).
 *
 * Why in C: the mixer placed each 100 ms chunk with a decode and numpy copies or adds (a few
 * microseconds each, in pieces that keep the GIL); deferred to one call per block, the chunks of
 * a second of a dialog are decoded and added here at once, and the call releases the GIL once.
 * Each chunk is decoded in pieces of PIECE samples by mulaw.c's decoders (their vector path) into
 * a buffer on the stack, then added into its column.
 */
#include <stddef.h>
#include <stdint.h>

#include "mix.h"
#include "mulaw.h"

enum { PIECE = 512 };

static inline int16_t saturate(int32_t sum)
{
    return (int16_t)(sum > 32767 ? 32767 : (sum < -32768 ? -32768 : sum));
}

size_t cs_mix_g711(int16_t *mix, size_t frames, size_t channels, const uint8_t *payloads, size_t size,
                   const int64_t *ops, size_t count)
{
    int16_t pcm[PIECE];
    for (size_t k = 0; k < count; k++) {
        const int64_t *op = ops + (size_t)CS_MIX_FIELDS * k;
        int64_t offset = op[0], length = op[1], frame = op[2], channel = op[3], law = op[4];
        if (offset < 0 || length < 0 || frame < 0 || channel < 0 || (size_t)channel >= channels
            || (law != CS_MIX_ULAW && law != CS_MIX_ALAW) || (size_t)offset > size
            || (size_t)length > size - (size_t)offset || (size_t)frame > frames
            || (size_t)length > frames - (size_t)frame)
            return k;
        const uint8_t *src = payloads + offset;
        int16_t *dst = mix + (size_t)frame * channels + (size_t)channel;
        for (size_t at = 0; at < (size_t)length; at += PIECE) {
            size_t n = (size_t)length - at < PIECE ? (size_t)length - at : PIECE;
            if (law == CS_MIX_ULAW)
                cs_ulaw_decode(pcm, src + at, n);
            else
                cs_alaw_decode(pcm, src + at, n);
            int16_t *column = dst + at * channels;
            for (size_t i = 0; i < n; i++)
                column[i * channels] = saturate((int32_t)column[i * channels] + pcm[i]);
        }
    }
    return count;
}

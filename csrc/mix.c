/* The segment mixer's writes (see mix.h for the contract).
 *
 * Why in C: the mixer placed each 100 ms chunk with a decode and numpy copies or adds (a few
 * microseconds each, in pieces that keep the GIL); deferred to one call per block, the chunks of
 * a second of a dialog are decoded and added here at once, and the call releases the GIL once.
 * Each chunk is decoded in pieces of PIECE samples by mulaw.c's decoders (their vector path) into
 * a buffer on the stack, then added into its column: in a stereo mix eight frames at a time with
 * SSE2's saturating 16-bit add (x86-64's baseline: no run-time choice), the piece's samples
 * interleaved with zeros so that the other channel gains nothing; else sample by sample. Adding
 * two int16s with 16-bit saturation is the 32-bit sum clipped, so both paths give the same mix.
 * A block's cut (cs_mix_cut) follows the writes in the same call, while the mix is in the cache.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "mix.h"
#include "mulaw.h"

enum { PIECE = 512 };

static inline int16_t saturate(int32_t sum)
{
    return (int16_t)(sum > 32767 ? 32767 : (sum < -32768 ? -32768 : sum));
}

#if defined(__SSE2__)
/* Adds pcm[0 .. n) into channel ``right`` (0 or 1) of the stereo frames from ``frames`` on, eight
 * at a time; returns how many it added (a multiple of eight: the caller adds the rest). */
static size_t add_stereo_sse2(int16_t *frames, int right, const int16_t *pcm, size_t n)
{
    const __m128i zero = _mm_setzero_si128();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i samples = _mm_loadu_si128((const __m128i *)(pcm + i));
        /* [p0, 0, p1, 0, ...] for the left channel, [0, p0, 0, p1, ...] for the right */
        __m128i low = right ? _mm_unpacklo_epi16(zero, samples) : _mm_unpacklo_epi16(samples, zero);
        __m128i high = right ? _mm_unpackhi_epi16(zero, samples) : _mm_unpackhi_epi16(samples, zero);
        __m128i *row = (__m128i *)(frames + 2 * i);
        _mm_storeu_si128(row, _mm_adds_epi16(_mm_loadu_si128(row), low));
        _mm_storeu_si128(row + 1, _mm_adds_epi16(_mm_loadu_si128(row + 1), high));
    }
    return i;
}
#endif

/* Adds pcm[0 .. n), saturating, into ``channel`` of the interleaved ``frames`` (``channels`` wide). */
static void add_column(int16_t *frames, size_t channels, size_t channel, const int16_t *pcm, size_t n)
{
    size_t i = 0;
#if defined(__SSE2__)
    if (channels == 2)
        i = add_stereo_sse2(frames, channel == 1, pcm, n);
#endif
    int16_t *column = frames + channel;
    for (; i < n; i++)
        column[i * channels] = saturate((int32_t)column[i * channels] + pcm[i]);
}

/* Whether op (CS_MIX_FIELDS int64s) fits: its bytes within ``size``, its frames within ``frames``,
 * its channel and law known, no field negative. */
static int op_fits(const int64_t *op, size_t frames, size_t channels, size_t size)
{
    int64_t offset = op[0], length = op[1], frame = op[2], channel = op[3], law = op[4];
    return !(offset < 0 || length < 0 || frame < 0 || channel < 0 || (size_t)channel >= channels
             || (law != CS_MIX_ULAW && law != CS_MIX_ALAW) || (size_t)offset > size
             || (size_t)length > size - (size_t)offset || (size_t)frame > frames
             || (size_t)length > frames - (size_t)frame);
}

/* Decodes the ``length`` codes at ``src`` (``law``) and adds them into ``channel`` of ``rows``. */
static void add_codes(int16_t *rows, size_t channels, size_t channel, const uint8_t *src, size_t length,
                      int64_t law)
{
    int16_t pcm[PIECE];
    for (size_t at = 0; at < length; at += PIECE) {
        size_t n = length - at < PIECE ? length - at : PIECE;
        if (law == CS_MIX_ULAW)
            cs_ulaw_decode(pcm, src + at, n);
        else
            cs_alaw_decode(pcm, src + at, n);
        add_column(rows + at * channels, channels, channel, pcm, n);
    }
}

size_t cs_mix_g711(int16_t *mix, size_t frames, size_t channels, const uint8_t *payloads, size_t size,
                   const int64_t *ops, size_t count)
{
    for (size_t k = 0; k < count; k++) {
        const int64_t *op = ops + (size_t)CS_MIX_FIELDS * k;
        if (!op_fits(op, frames, channels, size))
            return k;
        add_codes(mix + (size_t)op[2] * channels, channels, (size_t)op[3], payloads + op[0], (size_t)op[1], op[4]);
    }
    return count;
}

size_t cs_mix_cut(int16_t *mix, size_t frames, size_t channels, const uint8_t *payloads, size_t size,
                  const int64_t *ops, size_t count, int16_t *out, size_t n, size_t dirty)
{
    if (n > frames || dirty > frames)
        return count + 1;
    for (size_t k = 0; k < count; k++)
        if (!op_fits(ops + (size_t)CS_MIX_FIELDS * k, frames, channels, size))
            return k;
    /* what the mix held before the writes: the block's part out, the rest up (rows from
     * ``dirty`` on are zero: neither read nor written) */
    size_t row = channels * sizeof(int16_t), held = dirty < n ? dirty : n;
    memcpy(out, mix, held * row);
    memset(out + held * channels, 0, (n - held) * row);
    if (dirty > n) {
        memmove(mix, mix + n * channels, (dirty - n) * row);
        memset(mix + (dirty - n) * channels, 0, n * row);
    } else {
        memset(mix, 0, dirty * row);
    }
    /* then the writes, in order, each sample where its row went: a row's sums in the same order */
    for (size_t k = 0; k < count; k++) {
        const int64_t *op = ops + (size_t)CS_MIX_FIELDS * k;
        size_t frame = (size_t)op[2], length = (size_t)op[1], channel = (size_t)op[3];
        const uint8_t *src = payloads + op[0];
        size_t head = frame >= n ? 0 : (length < n - frame ? length : n - frame);
        if (head)
            add_codes(out + frame * channels, channels, channel, src, head, op[4]);
        if (length > head)
            add_codes(mix + (frame + head - n) * channels, channels, channel, src + head, length - head, op[4]);
    }
    return count;
}
